//! `sandkit-agent relay SOCKET`: joins this process's stdin and stdout to a Unix socket, so a host
//! reaches the agent serving on that socket through one attached `docker exec`, in every
//! network mode and on remote engines. std only: two threads copy bytes until either side
//! ends.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How long the socket may take to appear (the agent starts with the container).
const WAIT: Duration = Duration::from_secs(10);

pub(crate) fn run(socket: &str) -> ExitCode {
    let start = Instant::now();
    let stream = loop {
        match UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(e) if start.elapsed() < WAIT => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                eprintln!("sandkit-agent relay: cannot connect to {socket}: {e}");
                return ExitCode::from(1);
            }
        }
    };
    let Ok(mut to_agent) = stream.try_clone() else {
        eprintln!("sandkit-agent relay: cannot clone the socket");
        return ExitCode::from(1);
    };
    let mut from_agent = stream;
    let up = std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_agent.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to_agent.shutdown(std::net::Shutdown::Write);
    });
    let mut stdout = std::io::stdout().lock();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match from_agent.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stdout
                    .write_all(&buf[..n])
                    .and_then(|_| stdout.flush())
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    // The agent closed: nothing more to say, whatever stdin still holds.
    drop(up);
    ExitCode::SUCCESS
}
