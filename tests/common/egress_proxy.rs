//! An egress proxy of the tests' own (what `HTTPS_PROXY` / `--upstream-proxy` point at): it
//! opens CONNECT tunnels and passes absolute-form HTTP requests on, recording each request
//! line with its `Proxy-Authorization`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A request line the egress proxy saw, with its `Proxy-Authorization` value.
pub type ProxiedRequest = (String, Option<String>);

/// An egress proxy of the tests' own: CONNECT tunnels and absolute-form HTTP requests, each
/// recorded as its request line plus its `Proxy-Authorization` value.
pub struct EgressProxy {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<ProxiedRequest>>>,
}

impl EgressProxy {
    pub async fn start() -> EgressProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if client.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let text = String::from_utf8_lossy(&head).to_string();
                    let line = text.lines().next().unwrap_or_default().to_string();
                    let auth = text.lines().find_map(|l| {
                        l.to_ascii_lowercase()
                            .starts_with("proxy-authorization:")
                            .then(|| l.split_once(':').unwrap().1.trim().to_string())
                    });
                    seen.lock().unwrap().push((line.clone(), auth));
                    let mut parts = line.split(' ');
                    let (method, target) = (parts.next().unwrap(), parts.next().unwrap());
                    if method == "CONNECT" {
                        let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
                            let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                            return;
                        };
                        client
                            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                            .await
                            .unwrap();
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    } else {
                        // Absolute form: http://host:port/path. The hyper mock accepts it as is.
                        let authority = target
                            .strip_prefix("http://")
                            .and_then(|rest| rest.split('/').next())
                            .unwrap()
                            .to_string();
                        let mut upstream = tokio::net::TcpStream::connect(authority).await.unwrap();
                        upstream.write_all(&head).await.unwrap();
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        });
        EgressProxy { addr, seen }
    }

    pub fn url_with_credentials(&self) -> String {
        format!("http://puser:proxy-SECRET-pw@{}", self.addr)
    }

    pub fn seen(&self) -> Vec<ProxiedRequest> {
        self.seen.lock().unwrap().clone()
    }
}
