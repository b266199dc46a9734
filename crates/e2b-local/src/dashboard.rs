//! A read-only page for an operator, `GET /dashboard`: every key's sandboxes (key, template,
//! state, age, time left, and their CPU and memory over the last hour as plots), templates and
//! snapshots with their sizes, volumes, and what each key uses of its limits.
//!
//! Server-rendered HTML with inline SVG plots: no script, no build step; it reloads itself
//! every 10 seconds. A browser signs in with an operator key through the page's form
//! (`POST /dashboard/login`, from the page's own origin only), or opens a link an operator
//! key asked for (`POST /dashboard/link`: within 5 minutes, and once — again only within
//! seconds of its first use); either sets a session
//! cookie (12 hours, `HttpOnly`, `SameSite=Strict`) that names the key, so taking the key out
//! of the keys file (or its `operator` flag) ends the session at the next load. Serve it
//! behind TLS beyond loopback (the cookie is not marked `Secure`, so that plain loopback
//! works).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Query, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use sandkit_core::{ListFilter, SandboxState};
use serde::Deserialize;

use crate::caller::Caller;
use crate::http::{api_error, Shared};
use crate::keys::Key;
use crate::state::{State, OWNER_KEY, TEMPLATE_KEY};

const COOKIE: &str = "e2b_local_dashboard";
const SESSION: Duration = Duration::from_secs(12 * 3600);
const LINK: Duration = Duration::from_secs(300);

/// How long after its first use a link still opens (a browser may load it twice, as
/// Chromium's screenshot mode does).
const REOPEN: Duration = Duration::from_secs(10);

/// Whether link `token` (which expires at `expiry`) may sign a browser in now: once, and
/// again only within [`REOPEN`] of its first use.
fn open_link(state: &State, token: &str, expiry: u64) -> bool {
    let mut used = state.dashboard_links.lock().expect("links");
    let now = now_unix();
    used.retain(|_, (e, _)| *e >= now);
    let (_, first) = used
        .entry(token.to_string())
        .or_insert((expiry, std::time::Instant::now()));
    first.elapsed() < REOPEN
}

/// The page and its sign-in, outside the API key check (a browser sends no `X-API-Key`).
pub(crate) fn router(state: Shared) -> Router {
    Router::new()
        .route("/dashboard", get(page))
        .route("/dashboard/login", post(login))
        .with_state(state)
}

/// `POST /dashboard/link` (an operator key): a link that signs a browser in, for 5 minutes.
pub(crate) async fn link(state: Caller) -> Response {
    if !state.key.operator {
        return api_error(
            StatusCode::FORBIDDEN,
            "this key may not open the dashboard: give it `operator = true` in the keys file",
        );
    }
    let token = mint(&state, &state.key.owner, LINK, "dashboard-link");
    Json(serde_json::json!({ "path": format!("/dashboard?token={token}") })).into_response()
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// `expiry.owner.mac`: names a key (by owner) until `expiry`, signed with the server's secret.
fn mint(state: &State, owner: &str, ttl: Duration, purpose: &str) -> String {
    let body = format!("{}.{owner}", now_unix() + ttl.as_secs());
    let mac = state.sign(&body, purpose);
    format!("{body}.{mac}")
}

/// The operator key a token names, and when the token expires, if it is signed, unexpired
/// and still an operator's.
fn check(state: &State, token: &str, purpose: &str) -> Option<(Arc<Key>, u64)> {
    let (body, mac) = token.rsplit_once('.')?;
    if !sandkit_e2b_protocol::secrets_equal(mac, &state.sign(body, purpose)) {
        return None;
    }
    let (expiry, owner) = body.split_once('.')?;
    let expiry = expiry.parse::<u64>().ok()?;
    if expiry < now_unix() {
        return None;
    }
    let key = state.keys().by_owner(owner).filter(|k| k.operator)?;
    Some((key, expiry))
}

fn session_cookie(state: &State, owner: &str) -> HeaderValue {
    let token = mint(state, owner, SESSION, "dashboard");
    HeaderValue::from_str(&format!(
        "{COOKIE}={token}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION.as_secs()
    ))
    .expect("a cookie of ASCII")
}

fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    token: Option<String>,
}

async fn page(
    AxState(state): AxState<Shared>,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> Response {
    if let Some(token) = q.token.as_deref() {
        // A link: good once, then the page without it in the address bar.
        return match check(&state, token, "dashboard-link") {
            Some((key, expiry)) if open_link(&state, token, expiry) => {
                audit(&key, "signed in with a link");
                signed_in(&state, &key)
            }
            _ => html(
                StatusCode::UNAUTHORIZED,
                &sign_in(Some("This link is not valid, or was used already.")),
            ),
        };
    }
    if let Some((key, _)) = cookie(&headers).and_then(|t| check(&state, t, "dashboard")) {
        return html(StatusCode::OK, &render(&state, &key).await);
    }
    html(StatusCode::UNAUTHORIZED, &sign_in(None))
}

#[derive(Deserialize)]
struct LoginForm {
    key: String,
}

/// A session for `key`, and on to the page.
fn signed_in(state: &State, key: &Key) -> Response {
    let mut answer = (StatusCode::SEE_OTHER, [(header::LOCATION, "/dashboard")]).into_response();
    answer
        .headers_mut()
        .insert(header::SET_COOKIE, session_cookie(state, &key.owner));
    answer
}

fn audit(key: &Key, what: &str) {
    tracing::info!(target: "e2b_local::audit", key = %key.name, action = what, "dashboard");
}

/// Whether a form post comes from a page of this server (login CSRF): the browser's
/// `Sec-Fetch-Site`, else `Origin` against `Host`; a client that sends neither (curl) is not
/// a browser another site could drive.
fn same_origin(headers: &HeaderMap) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site") {
        return site == "same-origin" || site == "none";
    }
    match (get("origin"), get("host")) {
        (Some(origin), Some(host)) => {
            origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                == Some(host)
        }
        (Some(_), None) => false,
        (None, _) => true,
    }
}

async fn login(
    AxState(state): AxState<Shared>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if !same_origin(&headers) {
        return html(
            StatusCode::FORBIDDEN,
            &sign_in(Some("Sign in from this server's own page.")),
        );
    }
    match state.keys().find(form.key.trim()) {
        Some(key) if key.operator => {
            audit(&key, "signed in");
            signed_in(&state, &key)
        }
        Some(_) => html(
            StatusCode::FORBIDDEN,
            &sign_in(Some(
                "This key is not an operator's (operator = true in the keys file).",
            )),
        ),
        None => html(StatusCode::UNAUTHORIZED, &sign_in(Some("No such key."))),
    }
}

fn html(status: StatusCode, body: &str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // Nothing from elsewhere, no script, not framed, no address handed on.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; \
                 frame-ancestors 'none'; base-uri 'none'",
            ),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// Text as HTML shows it.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str =
    "body{font:14px system-ui,sans-serif;margin:24px;color:#1d2330;background:#f6f7f9}\
h1{font-size:20px}h2{font-size:16px;margin-top:28px}\
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px #0002}\
th,td{padding:6px 10px;border-bottom:1px solid #e4e6ea;text-align:left;vertical-align:middle}\
th{background:#eef0f3;font-weight:600}.num{text-align:right;font-variant-numeric:tabular-nums}\
.running{color:#137333}.paused{color:#b06000}.full{color:#c5221f;font-weight:600}\
.muted{color:#6b7280}form{background:#fff;padding:16px;display:inline-block}";

fn document(title: &str, body: &str, refresh: bool) -> String {
    let meta = if refresh {
        "<meta http-equiv=\"refresh\" content=\"10\">"
    } else {
        ""
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">{meta}\
         <title>{title}</title><style>{STYLE}</style></head><body>{body}</body></html>"
    )
}

fn sign_in(error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"full\">{}</p>", esc(e)))
        .unwrap_or_default();
    document(
        "e2b-local — sign in",
        &format!(
            "<h1>e2b-local</h1>{error}<form method=\"post\" action=\"/dashboard/login\">\
             <label>Operator API key <input type=\"password\" name=\"key\" autocomplete=\"off\"></label> \
             <button type=\"submit\">Sign in</button></form>"
        ),
        false,
    )
}

fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A plot of `points` (x from 0 to 1, y from 0 to 100), as an inline SVG polyline.
fn plot(points: &[(f64, f64)], color: &str, label: &str) -> String {
    const W: f64 = 180.0;
    const H: f64 = 36.0;
    // Room for the line's width: a 0% line is drawn, not lost under the edge.
    const PAD: f64 = 2.0;
    let line: Vec<String> = points
        .iter()
        .map(|(x, y)| {
            let y = PAD + (100.0 - y.clamp(0.0, 100.0)) / 100.0 * (H - 2.0 * PAD);
            format!("{:.1},{y:.1}", PAD + x.clamp(0.0, 1.0) * (W - 2.0 * PAD))
        })
        .collect();
    format!(
        "<svg width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{label}\">\
         <rect width=\"{W}\" height=\"{H}\" fill=\"#f1f3f6\"/>\
         <polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/></svg>",
        line.join(" ")
    )
}

/// The page as `viewer` sees it: everything on the server.
async fn render(state: &State, viewer: &Key) -> String {
    let keys = state.keys();
    let now = SystemTime::now();
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>e2b-local</h1><p class=\"muted\">Signed in with key <b>{}</b>. {} keys. \
         Shown at {} (reloads every 10 s).</p>",
        esc(&viewer.name),
        keys.len(),
        sandkit_e2b_protocol::json::rfc3339(now)
            .split('.')
            .next()
            .unwrap_or_default()
    );

    let sandboxes = match state.runtime.list(&ListFilter::all()).await {
        Ok(l) => l,
        Err(e) => {
            let _ = write!(
                body,
                "<p class=\"full\">The engine did not list sandboxes: {}</p>",
                esc(&e.to_string())
            );
            Vec::new()
        }
    };
    let snapshots = if state.runtime.capabilities().snapshots {
        state.runtime.snapshots(None).await.unwrap_or_default()
    } else {
        Vec::new()
    };
    let volumes = if state.runtime.capabilities().volumes {
        state.runtime.volumes().await.unwrap_or_default()
    } else {
        Vec::new()
    };
    let owner_name = |m: &BTreeMap<String, String>| -> Option<String> {
        keys.by_owner(m.get(OWNER_KEY)?).map(|k| k.name.clone())
    };

    // Sandboxes.
    let _ = write!(
        body,
        "<h2>Sandboxes</h2><table id=\"sandboxes\"><tr><th>Sandbox</th><th>Key</th><th>Template</th>\
         <th>State</th><th>Age</th><th>Time left</th><th class=\"num\">CPU</th>\
         <th class=\"num\">Memory</th><th>CPU, last hour</th><th>Memory, last hour</th></tr>"
    );
    let mut shown = 0;
    let mut used: BTreeMap<String, [usize; 4]> = BTreeMap::new();
    // Bytes held by key name: snapshots and templates here, uploads below.
    let mut disk: BTreeMap<String, u64> = BTreeMap::new();
    for info in &sandboxes {
        let Some(key) = owner_name(&info.metadata) else {
            continue;
        };
        let Some(template) = info.metadata.get(TEMPLATE_KEY) else {
            continue;
        };
        let state_name = match info.state {
            SandboxState::Running => "running",
            SandboxState::Paused => "paused",
            _ => continue,
        };
        used.entry(key.clone()).or_default()[if info.state == SandboxState::Running {
            0
        } else {
            1
        }] += 1;
        shown += 1;
        let owner = info
            .metadata
            .get(OWNER_KEY)
            .map(String::as_str)
            .unwrap_or_default();
        let samples = state.history.range(owner, &info.id, None, None);
        // The plots span the samples kept (an hour at most), and at least the last minute.
        let first = samples.first().map_or(now, |m| m.timestamp);
        let start = first.min(now - Duration::from_secs(60));
        let span = now.duration_since(start).unwrap_or_default().as_secs_f64();
        let x = |t: SystemTime| {
            t.duration_since(start)
                .map(|d| d.as_secs_f64() / span)
                .unwrap_or(0.0)
        };
        let cpu: Vec<(f64, f64)> = samples
            .iter()
            .map(|m| (x(m.timestamp), m.cpu_used_pct))
            .collect();
        let mem: Vec<(f64, f64)> = samples
            .iter()
            .map(|m| {
                (
                    x(m.timestamp),
                    m.mem_used as f64 * 100.0 / m.mem_total.max(1) as f64,
                )
            })
            .collect();
        let (cpu_now, mem_now) = match samples.last() {
            Some(m) => (
                format!("{:.1}%", m.cpu_used_pct),
                format!("{} / {}", bytes(m.mem_used), bytes(m.mem_total)),
            ),
            None => ("—".into(), "—".into()),
        };
        let age = now.duration_since(info.started_at).unwrap_or_default();
        let left = match info.expires_at {
            Some(end) if info.state == SandboxState::Running => {
                duration(end.duration_since(now).unwrap_or_default())
            }
            _ => "—".into(),
        };
        let _ = write!(
            body,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td class=\"{state_name}\">{state_name}</td>\
             <td>{}</td><td>{left}</td><td class=\"num\">{cpu_now}</td><td class=\"num\">{mem_now}</td>\
             <td>{}</td><td>{}</td></tr>",
            esc(&info.id),
            esc(&key),
            esc(template),
            duration(age),
            plot(&cpu, "#1a73e8", "CPU percent over the last hour"),
            plot(&mem, "#e8710a", "memory percent over the last hour"),
        );
    }
    if shown == 0 {
        body.push_str("<tr><td colspan=\"10\" class=\"muted\">No sandboxes.</td></tr>");
    }
    body.push_str("</table>");

    // Templates and snapshots.
    body.push_str(
        "<h2>Templates and snapshots</h2><table id=\"snapshots\"><tr><th>Name</th><th>Kind</th>\
         <th>Key</th><th>Taken</th><th class=\"num\">Size</th></tr>",
    );
    let mut listed = 0;
    for s in &snapshots {
        let Some(key) = owner_name(&s.metadata) else {
            continue;
        };
        let template = s.metadata.get(crate::templates::ALIAS_KEY);
        let kind = if template.is_some() {
            "template"
        } else {
            "snapshot"
        };
        if template.is_none() {
            used.entry(key.clone()).or_default()[2] += 1;
        }
        *disk.entry(key.clone()).or_default() += s.size.unwrap_or(0);
        listed += 1;
        let name = match template {
            Some(alias) => alias.clone(),
            None => s.names.first().cloned().unwrap_or_else(|| s.id.clone()),
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{kind}</td><td>{}</td><td>{} ago</td><td class=\"num\">{}</td></tr>",
            esc(&name),
            esc(&key),
            duration(now.duration_since(s.created_at).unwrap_or_default()),
            s.size.map(bytes).unwrap_or_else(|| "—".into()),
        );
    }
    if listed == 0 {
        body.push_str("<tr><td colspan=\"5\" class=\"muted\">None.</td></tr>");
    }
    body.push_str("</table>");

    for v in &volumes {
        if let Some(key) = owner_name(&v.metadata) {
            used.entry(key).or_default()[3] += 1;
        }
    }

    // Quotas.
    body.push_str(
        "<h2>Keys and their limits</h2><table id=\"keys\"><tr><th>Key</th><th>Operator</th>\
         <th class=\"num\">Running</th><th class=\"num\">Paused</th><th class=\"num\">Sandboxes / limit</th>\
         <th class=\"num\">Creates a minute</th><th class=\"num\">Snapshots / limit</th>\
         <th class=\"num\">Volumes / limit</th><th class=\"num\">Builds at once</th><th class=\"num\">Disk / limit</th></tr>",
    );
    let mut all = keys.all();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    for key in all {
        let [running, paused, snaps, vols] = used.get(&key.name).copied().unwrap_or_default();
        let l = &key.limits;
        let full = |n: usize, max: usize| if n >= max { " full" } else { "" };
        let held = disk.get(&key.name).copied().unwrap_or(0)
            + crate::disk::uploads(state, &key.owner).await;
        let disk_max = crate::disk::limit(&key);
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{running}</td><td class=\"num\">{paused}</td>\
             <td class=\"num{}\">{} / {}</td><td class=\"num\">{}</td><td class=\"num{}\">{snaps} / {}</td>\
             <td class=\"num{}\">{vols} / {}</td><td class=\"num\">{}</td>\
             <td class=\"num{}\">{} / {}</td></tr>",
            esc(&key.name),
            if key.operator { "yes" } else { "" },
            full(running + paused, l.max_sandboxes),
            running + paused,
            l.max_sandboxes,
            l.creates_per_minute,
            full(snaps, l.max_snapshots),
            l.max_snapshots,
            full(vols, l.max_volumes),
            l.max_volumes,
            l.max_builds,
            if held >= disk_max { " full" } else { "" },
            bytes(held),
            bytes(disk_max),
        );
    }
    body.push_str("</table>");
    document("e2b-local — dashboard", &body, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_plots_stay_in_their_box() {
        assert_eq!(esc("<b a=\"x\">&'"), "&lt;b a=&quot;x&quot;&gt;&amp;&#39;");
        let svg = plot(&[(0.0, 150.0), (1.0, -3.0)], "#000", "x");
        assert!(svg.contains("points=\"2.0,2.0 178.0,34.0\""), "{svg}");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(duration(Duration::from_secs(3725)), "1h 2m");
    }

    #[test]
    fn a_form_post_from_another_site_is_refused() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "cross-site")])));
        // A sandbox's port page (`<port>-<id>.localhost`) is the same site, not the same origin.
        assert!(!same_origin(&headers(&[("sec-fetch-site", "same-site")])));
        assert!(same_origin(&headers(&[
            ("origin", "http://127.0.0.1:3000"),
            ("host", "127.0.0.1:3000")
        ])));
        assert!(!same_origin(&headers(&[
            ("origin", "http://8080-abc.localhost:3002"),
            ("host", "127.0.0.1:3000")
        ])));
        assert!(same_origin(&headers(&[])));
    }
}
