//! A TCP proxy on loopback that a test can cut (every connection closed, new ones dropped at once)
//! and restore: a client cut off from its server at a moment the test chooses.

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    /// Where clients connect (`127.0.0.1:PORT`).
    pub addr: String,
    open: watch::Sender<bool>,
}

impl Proxy {
    /// A proxy to `target`, open.
    pub async fn start(target: String) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let (open, _) = watch::channel(true);
        let state = open.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut up = state.subscribe();
                if !*up.borrow() {
                    continue; // cut: the connection is dropped at once
                }
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = up.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        Ok(Proxy { addr, open })
    }

    /// Cuts (`false`) or restores (`true`) the way through.
    pub fn set(&self, open: bool) {
        self.open.send_replace(open);
    }
}
