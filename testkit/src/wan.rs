//! A wide-area network in user space (this kernel has no `tc netem`): regions, a matrix of one-way
//! delays between them, and an ingress proxy in front of each server that delays every byte by the
//! delay from the connecting client's region to the server's (and the answer by the way back).
//! Clients are told apart by their source address, so every process of a test binds its own
//! loopback address and is registered with its region. Jitter is added without reordering bytes;
//! "loss" on a TCP stream is a retransmission: a lost chunk arrives one retransmission timeout later.
//! Regions can also be cut from each other (connections between them are closed and refused).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Three regions as the multi-region layout describes them (one-way delays).
pub const THREE_REGIONS: &str = "us-east:eu-west=40ms,us-east:ap-south=110ms,eu-west:ap-south=75ms";

/// The retransmission timeout a lost chunk waits (Linux's minimum RTO).
const RTO: Duration = Duration::from_millis(200);

/// One-way delays between regions (symmetric), with jitter and loss on every inter-region link.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Matrix {
    delays: BTreeMap<(String, String), Duration>,
    pub jitter: Duration,
    /// Probability that a chunk is lost once (and retransmitted), 0 to 1.
    pub loss: f64,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (n, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "ms"), |i| s.split_at(i));
    let n: f64 = n.parse().map_err(|e| format!("{s:?}: {e}"))?;
    let ms = match unit {
        "ms" => n,
        "s" => n * 1000.0,
        "us" => n / 1000.0,
        other => return Err(format!("{s:?}: unknown unit {other:?} (ms, s, us)")),
    };
    Ok(Duration::from_secs_f64(ms / 1000.0))
}

impl Matrix {
    /// Parses `A:B=40ms,A:C=110ms,B:C=75ms[,jitter=2ms][,loss=0.1%]` (one-way delays).
    pub fn parse(spec: &str) -> Result<Matrix, String> {
        let mut m = Matrix::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected A:B=DELAY, jitter=D or loss=P%"))?;
            match k.trim() {
                "jitter" => m.jitter = parse_duration(v)?,
                "loss" => {
                    let p: f64 = v
                        .trim()
                        .trim_end_matches('%')
                        .parse()
                        .map_err(|e| format!("{part:?}: {e}"))?;
                    if !(0.0..100.0).contains(&p) {
                        return Err(format!("{part:?}: loss must be at least 0 and below 100%"));
                    }
                    m.loss = p / 100.0;
                }
                pair => {
                    let (a, b) = pair
                        .split_once(':')
                        .ok_or_else(|| format!("{part:?}: expected REGION:REGION=DELAY"))?;
                    m.set(a.trim(), b.trim(), parse_duration(v)?);
                }
            }
        }
        Ok(m)
    }

    /// Sets the one-way delay between two regions (both ways).
    pub fn set(&mut self, a: &str, b: &str, d: Duration) {
        self.delays.insert(Self::key(a, b), d);
    }

    fn key(a: &str, b: &str) -> (String, String) {
        if a <= b {
            (a.to_string(), b.to_string())
        } else {
            (b.to_string(), a.to_string())
        }
    }

    /// The one-way delay from `a` to `b`: zero within a region or for a pair the matrix lacks.
    pub fn delay(&self, a: &str, b: &str) -> Duration {
        if a == b {
            return Duration::ZERO;
        }
        self.delays
            .get(&Self::key(a, b))
            .copied()
            .unwrap_or_default()
    }

    /// Every region the matrix names.
    pub fn regions(&self) -> BTreeSet<String> {
        self.delays
            .keys()
            .flat_map(|(a, b)| [a.clone(), b.clone()])
            .collect()
    }
}

/// The network: which region each client address is in, which region pairs are cut.
#[derive(Clone)]
pub struct Wan {
    pub matrix: Arc<Matrix>,
    regions: Arc<Mutex<HashMap<IpAddr, String>>>,
    cuts: watch::Sender<BTreeSet<(String, String)>>,
}

/// An ingress proxy: connect to `addr` to reach its server from your region.
pub struct Ingress {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Ingress {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A small PRNG (splitmix64) for jitter and loss: no need for more.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) as f64 / u64::MAX as f64
    }
}

impl Wan {
    pub fn new(matrix: Matrix) -> Wan {
        Wan {
            matrix: Arc::new(matrix),
            regions: Arc::default(),
            cuts: watch::channel(BTreeSet::new()).0,
        }
    }

    /// Places the process that connects from `ip` in `region`.
    pub fn place(&self, ip: IpAddr, region: &str) {
        self.regions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ip, region.to_string());
    }

    /// The region of a client address, if placed.
    pub fn region_of(&self, ip: IpAddr) -> Option<String> {
        self.regions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ip)
            .cloned()
    }

    /// Cuts region `a` from every other region (`true`) or heals all its links (`false`).
    pub fn isolate(&self, a: &str, cut: bool) {
        let others: Vec<String> = self
            .matrix
            .regions()
            .into_iter()
            .filter(|r| r != a)
            .collect();
        self.cuts.send_modify(|c| {
            for b in &others {
                let k = Matrix::key(a, b);
                if cut {
                    c.insert(k);
                } else {
                    c.remove(&k);
                }
            }
        });
    }

    fn is_cut(cuts: &BTreeSet<(String, String)>, a: &str, b: &str) -> bool {
        a != b && cuts.contains(&Matrix::key(a, b))
    }

    /// An ingress on `listen` (port 0 for any) for the server at `target` in `region`. Needs to be
    /// called within a tokio runtime, which runs it.
    pub fn ingress(
        &self,
        listen: SocketAddr,
        region: &str,
        target: SocketAddr,
    ) -> std::io::Result<Ingress> {
        self.ingress_from(listen, None, region, target)
    }

    /// An ingress as `ingress`, for clients of region `from` whatever their address (`None`: told
    /// apart by their address): for a process that cannot choose the address it connects from (a
    /// third-party server dialling its peers), each region is given an address of its own to dial.
    pub fn ingress_from(
        &self,
        listen: SocketAddr,
        from: Option<&str>,
        region: &str,
        target: SocketAddr,
    ) -> std::io::Result<Ingress> {
        let std_listener = std::net::TcpListener::bind(listen)?;
        std_listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(std_listener)?;
        let addr = listener.local_addr()?;
        let (wan, region, fixed) = (self.clone(), region.to_string(), from.map(str::to_string));
        let task = tokio::spawn(async move {
            let mut seed = u64::from(addr.port());
            while let Ok((client, peer)) = listener.accept().await {
                let from = fixed
                    .clone()
                    .or_else(|| wan.region_of(peer.ip()))
                    .unwrap_or_else(|| region.clone());
                let mut cuts = wan.cuts.subscribe();
                if Wan::is_cut(&cuts.borrow(), &from, &region) {
                    continue; // dropped: the regions cannot reach each other
                }
                let there = wan.matrix.delay(&from, &region);
                let back = wan.matrix.delay(&region, &from);
                let (jitter, loss) = (wan.matrix.jitter, wan.matrix.loss);
                seed = seed.wrapping_add(1);
                let (to, at) = (region.clone(), seed);
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let link = |delay| Link {
                        delay,
                        jitter: if delay.is_zero() {
                            Duration::ZERO
                        } else {
                            jitter
                        },
                        loss: if delay.is_zero() { 0.0 } else { loss },
                    };
                    tokio::select! {
                        _ = async {
                            tokio::join!(
                                pump(cr, sw, link(there), Rng(at)),
                                pump(sr, cw, link(back), Rng(!at)),
                            )
                        } => {}
                        _ = cuts.wait_for(|c| Wan::is_cut(c, &from, &to)) => {}
                    }
                });
            }
        });
        Ok(Ingress { addr, task })
    }
}

#[derive(Clone, Copy)]
struct Link {
    delay: Duration,
    jitter: Duration,
    loss: f64,
}

/// Copies one direction of a connection, each chunk delivered `link.delay` (plus jitter, plus an RTO
/// when lost) after it was read, never before an earlier chunk; the end of the stream follows the
/// last chunk.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, link: Link, mut rng: Rng) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut last = Instant::now();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut due = Instant::now() + link.delay + link.jitter.mul_f64(rng.unit());
            if link.loss > 0.0 && rng.unit() < link.loss {
                due += RTO.max(link.delay * 2);
            }
            last = last.max(due);
            if tx.send((last, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_matrix_parses_delays_jitter_and_loss_and_is_symmetric() {
        let m = Matrix::parse("us-east:eu-west=40ms, us-east:ap-south=110ms,eu-west:ap-south=0.075s,jitter=2ms,loss=0.5%")
            .unwrap();
        assert_eq!(m.delay("eu-west", "us-east"), Duration::from_millis(40));
        assert_eq!(m.delay("ap-south", "eu-west"), Duration::from_millis(75));
        assert_eq!(m.delay("us-east", "us-east"), Duration::ZERO);
        assert_eq!(m.jitter, Duration::from_millis(2));
        assert!((m.loss - 0.005).abs() < 1e-12);
        assert_eq!(m.regions().len(), 3);
        for bad in ["us-east=40ms", "a:b=40parsecs", "loss=100%", "a:b"] {
            assert!(Matrix::parse(bad).is_err(), "{bad}");
        }
    }

    /// An echo server: writes back what it reads.
    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn connect_from(source: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
        let s = tokio::net::TcpSocket::new_v4()?;
        s.bind(SocketAddr::new(source, 0))?;
        s.connect(to).await
    }

    #[tokio::test]
    async fn bytes_cross_regions_intact_in_order_and_no_sooner_than_the_round_trip() {
        let wan = Wan::new(Matrix::parse("a:b=30ms,jitter=5ms,loss=5%").unwrap());
        let (in_a, in_b): (IpAddr, IpAddr) =
            ("127.88.0.1".parse().unwrap(), "127.88.0.2".parse().unwrap());
        wan.place(in_a, "a");
        wan.place(in_b, "b");
        let server = echo_server().await;
        let ingress = wan
            .ingress("127.0.0.1:0".parse().unwrap(), "b", server)
            .unwrap();

        let payload: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
        let started = Instant::now();
        let s = connect_from(in_a, ingress.addr).await.unwrap();
        let (mut r, mut w) = s.into_split();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.unwrap();
        writer.await.unwrap();
        assert!(back == payload, "every byte back, in order");
        assert!(
            started.elapsed() >= Duration::from_millis(60),
            "a round trip between a and b takes at least 2 × 30 ms: {:?}",
            started.elapsed()
        );

        // Cut b off: an open connection closes, a new one gets nothing through.
        let s = connect_from(in_a, ingress.addr).await.unwrap();
        wan.isolate("b", true);
        let (mut r, mut w) = s.into_split();
        let _ = w.write_all(b"x").await;
        let mut buf = [0u8; 1];
        assert_eq!(r.read(&mut buf).await.unwrap_or(0), 0, "closed by the cut");
        let s = connect_from(in_a, ingress.addr).await.unwrap();
        let (mut r, mut w) = s.into_split();
        let _ = w.write_all(b"x").await;
        assert_eq!(r.read(&mut buf).await.unwrap_or(0), 0, "refused while cut");
        // Within region b nothing is cut; healed, a and b talk again.
        let s = connect_from(in_b, ingress.addr).await.unwrap();
        let (mut r, mut w) = s.into_split();
        w.write_all(b"y").await.unwrap();
        r.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"y");
        wan.isolate("b", false);
        let s = connect_from(in_a, ingress.addr).await.unwrap();
        let (mut r, mut w) = s.into_split();
        w.write_all(b"z").await.unwrap();
        r.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"z");
    }

    #[tokio::test]
    async fn an_ingress_for_one_region_delays_every_client_as_from_that_region() {
        let wan = Wan::new(Matrix::parse("a:b=30ms").unwrap());
        let in_b: IpAddr = "127.88.1.2".parse().unwrap();
        wan.place(in_b, "b");
        let ingress = wan
            .ingress_from(
                "127.0.0.1:0".parse().unwrap(),
                Some("a"),
                "b",
                echo_server().await,
            )
            .unwrap();
        let started = Instant::now();
        let mut s = connect_from(in_b, ingress.addr).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 1];
        s.read_exact(&mut buf).await.unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(60),
            "a client of b's address, as from a: {:?}",
            started.elapsed()
        );
    }
}
