//! Serving one listener with limits: connection caps (in all and per source address), a time
//! limit on each request's headers (and on idle HTTP/1 connections), keepalive pings on
//! HTTP/2, and a graceful stop.
//!
//! axum's own `serve` has none of these; a client that opens connections and sends nothing
//! would otherwise hold them for ever.
//!
//! **Floods.** A cap alone lets a stranger who holds enough silent connections lock everyone
//! out. So a connection is *proven* once a request on it passed the API key check ([`prove`]),
//! or had a successful answer to a request other than `/health` (every other route answers
//! success only to a client with credentials: an access token, a signed URL, a derived token). When a cap is full, a new connection closes the
//! oldest unproven connection (of its own source when the per-source cap is full) instead of
//! being refused; it is refused only when every connection in the way is proven. Proven
//! connections are never closed for a newcomer, so a flood of connections that never
//! authenticate cannot push out a client that did. Nor is a connection closed while a request
//! on it is being answered, and among the rest a connection that never sent a request (what a
//! silent flood holds) goes before one that did (a client between its `/health` and its next
//! call).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::state::Limits;

/// What the caps know of a connection's traffic.
#[derive(Default)]
struct Mark {
    /// A request on it passed the credentials check, or had a successful answer.
    proven: AtomicBool,
    /// Requests it has sent.
    requests: AtomicUsize,
    /// Requests being answered now.
    busy: AtomicUsize,
}

/// The mark of a request's connection, in the request's extensions (see [`prove`]).
#[derive(Clone)]
pub(crate) struct Proven(Arc<Mark>);

/// Marks the connection `request` came on as proven: its credentials were checked.
pub(crate) fn prove(request: &axum::extract::Request) {
    if let Some(Proven(m)) = request.extensions().get::<Proven>() {
        m.proven.store(true, Ordering::Relaxed);
    }
}

/// Counts a request as being answered until it is dropped.
struct Busy(Arc<Mark>);

impl Busy {
    fn new(mark: Arc<Mark>) -> Self {
        mark.requests.fetch_add(1, Ordering::Relaxed);
        mark.busy.fetch_add(1, Ordering::Relaxed);
        Busy(mark)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One open connection, as the caps see it.
struct Entry {
    peer: IpAddr,
    opened: Instant,
    mark: Arc<Mark>,
    close: CancellationToken,
}

/// The open connections of one listener.
#[derive(Default)]
struct Open {
    next: u64,
    entries: HashMap<u64, Entry>,
    per_source: HashMap<IpAddr, usize>,
}

/// What the caps say of a new connection.
enum Admit {
    /// Admitted as connection `id`.
    Yes(u64, Arc<Mark>, CancellationToken),
    /// Refused: every connection in the way is proven.
    No,
}

impl Open {
    /// Admits a connection from `peer`, closing one in the way if a cap is full: unproven and
    /// with no request being answered; one that never sent a request first, then the oldest.
    fn admit(&mut self, peer: IpAddr, limits: &Limits) -> Admit {
        let from_peer = self.per_source.get(&peer).copied().unwrap_or(0);
        let source_full = from_peer >= limits.max_connections_per_source.max(1);
        let all_full = self.entries.len() >= limits.max_connections.max(1);
        if source_full || all_full {
            let victim = self
                .entries
                .iter()
                .filter(|(_, e)| {
                    !e.mark.proven.load(Ordering::Relaxed)
                        && e.mark.busy.load(Ordering::Relaxed) == 0
                })
                .filter(|(_, e)| !source_full || e.peer == peer)
                .min_by_key(|(_, e)| (e.mark.requests.load(Ordering::Relaxed) > 0, e.opened))
                .map(|(id, _)| *id);
            match victim {
                Some(id) => {
                    if let Some(e) = self.remove(id) {
                        e.close.cancel();
                    }
                }
                None => return Admit::No,
            }
        }
        let id = self.next;
        self.next += 1;
        let (mark, close) = (Arc::new(Mark::default()), CancellationToken::new());
        self.entries.insert(
            id,
            Entry {
                peer,
                opened: Instant::now(),
                mark: mark.clone(),
                close: close.clone(),
            },
        );
        *self.per_source.entry(peer).or_default() += 1;
        Admit::Yes(id, mark, close)
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let e = self.entries.remove(&id)?;
        if let Some(n) = self.per_source.get_mut(&e.peer) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&e.peer);
            }
        }
        Some(e)
    }
}

/// Takes a connection out of the table when its task ends, however it ends.
struct Leave {
    open: Arc<Mutex<Open>>,
    id: u64,
}

impl Drop for Leave {
    fn drop(&mut self) {
        self.open.lock().expect("open connections").remove(self.id);
    }
}

/// Raises this process's soft limit of open files to its hard limit, so that the connection
/// caps, not the file table, decide who is served. Says so when the hard limit is below what
/// the caps need.
pub(crate) fn raise_open_file_limit(needed: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                debug!(
                    from = limit.rlim_cur,
                    to = limit.rlim_max,
                    "raised the open-file limit"
                );
                limit = raised;
            }
        }
    }
    if limit.rlim_cur < needed {
        warn!(
            open_files = limit.rlim_cur,
            needed,
            "the open-file limit is below what the connection caps allow: past it, new \
             connections fail to be accepted; raise it (ulimit -n) or lower --max-connections"
        );
    }
}

/// Serves `router` on `listener` until `stop` turns true, then lets open requests finish for
/// up to `grace`.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let open = Arc::new(Mutex::new(Open::default()));
    let mut connections = JoinSet::new();
    let mut refused: u64 = 0;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped(&mut stop) => break,
        };
        // Finished connection tasks are collected as we go.
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait a moment rather than spin.
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admitted = open
            .lock()
            .expect("open connections")
            .admit(peer.ip(), &limits);
        let Admit::Yes(id, mark, close) = admitted else {
            refused += 1;
            if refused.is_power_of_two() {
                warn!(
                    %peer,
                    refused,
                    max = limits.max_connections,
                    max_per_source = limits.max_connections_per_source,
                    "connection caps reached with every connection proven; refusing connections"
                );
            }
            drop(stream);
            continue;
        };
        if let Err(e) = stream.set_nodelay(true) {
            // Small stream frames go out at once: without TCP_NODELAY, Nagle's algorithm holds
            // a frame back until the previous one is acknowledged (~40 ms).
            debug!(error = %e, "could not set TCP_NODELAY");
        }
        let leave = Leave {
            open: open.clone(),
            id,
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |request: axum::extract::Request<_>| {
            let health = request.uri().path() == "/health";
            let (router, mark) = (router.clone(), mark.clone());
            let busy = Busy::new(mark.clone());
            let mut request = request.map(axum::body::Body::new);
            request.extensions_mut().insert(Proven(mark.clone()));
            // Who asked: envd's `/files` does not compress for a client on this machine.
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            async move {
                let response = router.oneshot(request).await?;
                if !health && response.status().is_success() {
                    mark.proven.store(true, Ordering::Relaxed);
                }
                // A streamed answer (a command's output) keeps its connection busy until its
                // body is done.
                let response = response.map(|body| {
                    // (`map_err` keeps the body's size hint, so a length still goes out.)
                    axum::body::Body::new(http_body_util::BodyExt::map_err(body, move |e| {
                        let _ = &busy;
                        e
                    }))
                });
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let mut stop = stop.clone();
        let header_timeout = limits.header_timeout;
        connections.spawn(async move {
            let _leave = leave;
            // A client says something at once; one that says nothing is not kept.
            let mut first = [0u8; 1];
            tokio::select! {
                said = tokio::time::timeout(header_timeout, stream.peek(&mut first)) => match said {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return,
                },
                _ = close.cancelled() => return,
            }
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(Duration::from_secs(30)))
                .keep_alive_timeout(Duration::from_secs(20))
                .max_concurrent_streams(256);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                // Pushed out by a newcomer while unproven: it never had an answer worth keeping.
                _ = close.cancelled() => {}
                _ = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    // Streams of running commands would hold connections open: give them a moment.
    let _ = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(all: usize, per_source: usize) -> Limits {
        Limits {
            max_connections: all,
            max_connections_per_source: per_source,
            ..Default::default()
        }
    }

    fn id(a: Admit) -> u64 {
        match a {
            Admit::Yes(id, ..) => id,
            Admit::No => panic!("refused"),
        }
    }

    #[test]
    fn a_full_table_pushes_out_the_oldest_unproven_connection() {
        let (one, two): (IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let l = limits(3, 2);
        let mut open = Open::default();
        let first = id(open.admit(one, &l));
        let second = id(open.admit(one, &l));
        // The source is full: the oldest of its own goes.
        let third = id(open.admit(one, &l));
        assert!(!open.entries.contains_key(&first));
        assert!(open.entries.contains_key(&second) && open.entries.contains_key(&third));
        // Proven connections stay; with nothing unproven left in the way, refused.
        for e in open.entries.values() {
            e.mark.proven.store(true, Ordering::Relaxed);
        }
        assert!(matches!(open.admit(one, &l), Admit::No));
        // Another source still gets in until the whole table is full of proven ones.
        let other = id(open.admit(two, &l));
        open.entries[&other]
            .mark
            .proven
            .store(true, Ordering::Relaxed);
        assert!(matches!(open.admit(two, &l), Admit::No));
        assert_eq!(open.per_source[&one], 2);
        assert_eq!(open.entries.len(), 3);
    }

    #[test]
    fn a_connection_being_answered_stays_and_a_silent_one_goes_first() {
        let one: IpAddr = "10.0.0.1".parse().unwrap();
        let l = limits(3, 3);
        let mut open = Open::default();
        let (talked, answering, silent) = (
            id(open.admit(one, &l)),
            id(open.admit(one, &l)),
            id(open.admit(one, &l)),
        );
        // `talked` sent a request that was answered; `answering` has one being answered now.
        let done = Busy::new(open.entries[&talked].mark.clone());
        drop(done);
        let _busy = Busy::new(open.entries[&answering].mark.clone());
        // The newest, silent connection goes before the oldest that talked.
        let newest = id(open.admit(one, &l));
        assert!(!open.entries.contains_key(&silent));
        assert!(open.entries.contains_key(&talked));
        // Once every connection has talked, the oldest goes; the one being answered never.
        drop(Busy::new(open.entries[&newest].mark.clone()));
        id(open.admit(one, &l));
        assert!(open.entries.contains_key(&newest));
        assert!(open.entries.contains_key(&answering));
        assert!(!open.entries.contains_key(&talked));
    }
}
