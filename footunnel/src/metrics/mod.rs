//! Prometheus metrics (`--metrics ADDR:PORT`, off by default): a page
//! written at each scrape from the same sources as `footunnel show` (the
//! pinned maps and the state files), so the two never disagree, served over
//! a minimal HTTP/1.1 responder (see [`Server`]).

pub mod page;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc, oneshot},
};
use tracing::debug;

use page::CONTENT_TYPE;

/// The metrics listener, built so that no number of local connections can
/// hold up the event loop that owns it: a connection's request is read in a
/// task of its own before the page is asked for, the page is rendered at
/// most once per [`PAGE_MAX_AGE`] however many ask, at most
/// [`MAX_CONNECTIONS`] are served at a time (more are closed at once), and
/// the loop polls it after its events.
pub struct Server {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    wanted_tx: mpsc::Sender<oneshot::Sender<Arc<str>>>,
    wanted_rx: mpsc::Receiver<oneshot::Sender<Arc<str>>>,
    page: Option<(Instant, Arc<str>)>,
}

/// Connections served at a time; Prometheus needs one.
pub const MAX_CONNECTIONS: usize = 8;
/// How long a rendered page is served again.
pub const PAGE_MAX_AGE: Duration = Duration::from_secs(1);
/// How long a connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the metrics listener needs of the loop that owns it.
pub enum Work {
    /// A new connection.
    Connection(TcpStream),
    /// A connection's request is read: it waits for the page.
    Page(oneshot::Sender<Arc<str>>),
}

/// Binds the metrics listener; failing to is a start-up error, never a
/// silent absence of metrics.
pub async fn bind(addr: SocketAddr) -> Result<Server> {
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("cannot serve metrics on {addr}: pick a free address and port for `metrics`/--metrics, or leave it out")
    })?;
    let (wanted_tx, wanted_rx) = mpsc::channel(MAX_CONNECTIONS);
    Ok(Server { listener, slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)), wanted_tx, wanted_rx, page: None })
}

/// The listener's next piece of work; never, without a listener.
pub async fn next(server: Option<&mut Server>) -> Work {
    let Some(server) = server else { return std::future::pending().await };
    loop {
        tokio::select! {
            Some(reply) = server.wanted_rx.recv() => return Work::Page(reply),
            accepted = server.listener.accept() => match accepted {
                Ok((stream, _)) => return Work::Connection(stream),
                // Out of descriptors, say: the next try may work.
                Err(e) => {
                    debug!("metrics accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

impl Server {
    /// Does `work`; `render` makes the page, when the last one is too old.
    pub fn handle(&mut self, work: Work, render: impl FnOnce() -> String) {
        match work {
            Work::Connection(stream) => match self.slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    let wanted = self.wanted_tx.clone();
                    tokio::spawn(async move {
                        serve(stream, wanted).await;
                        drop(slot);
                    });
                }
                // Over the cap: closed unread.
                Err(_) => debug!("metrics: {MAX_CONNECTIONS} connections already; closing another"),
            },
            Work::Page(reply) => {
                let now = Instant::now();
                let page = match &self.page {
                    Some((at, page)) if now.duration_since(*at) < PAGE_MAX_AGE => page.clone(),
                    _ => {
                        let page: Arc<str> = render().into();
                        self.page = Some((now, page.clone()));
                        page
                    }
                };
                let _ = reply.send(page);
            }
        }
    }
}

/// Answers one HTTP request on `stream`: `GET /metrics` gets the page, asked
/// for only once the request is read.
async fn serve(mut stream: TcpStream, wanted: mpsc::Sender<oneshot::Sender<Arc<str>>>) {
    let mut request = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read_head = async {
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
    };
    if tokio::time::timeout(REQUEST_TIMEOUT, read_head).await.is_err() {
        return;
    }
    let line = String::from_utf8_lossy(&request).lines().next().unwrap_or_default().to_owned();
    let (status, content_type, body): (_, _, Arc<str>) = match line.split_whitespace().collect::<Vec<_>>()[..] {
        ["GET", "/metrics", _] | ["GET", "/", _] => {
            let (reply, page) = oneshot::channel();
            if wanted.send(reply).await.is_err() {
                return;
            }
            let Ok(page) = page.await else { return };
            ("200 OK", CONTENT_TYPE, page)
        }
        ["GET", _, _] => ("404 Not Found", "text/plain", "footunnel serves its metrics at /metrics\n".into()),
        _ => ("405 Method Not Allowed", "text/plain", "GET /metrics\n".into()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if let Err(e) = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    }
    .await
    {
        debug!("metrics request: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn many_scrapes_in_a_second_render_one_page() {
        let mut server = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let renders = std::cell::Cell::new(0);
        let mut pages = Vec::new();
        for _ in 0..50 {
            let (reply, page) = oneshot::channel();
            server.handle(Work::Page(reply), || {
                renders.set(renders.get() + 1);
                format!("page {}\n", renders.get())
            });
            pages.push(page.await.unwrap());
        }
        assert_eq!(renders.get(), 1, "rendered once per scrape");
        assert!(pages.iter().all(|p| &**p == "page 1\n"));
    }
}
