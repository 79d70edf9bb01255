//! The Python `kubernetes` client (from PyPI; `.ci/deps` installs it) watching a 3-member store through
//! the Kubernetes API: `tests/python/watch_stream.py` resumes its watch across a restart of its member
//! (this test stops and starts the member when the script asks) and recovers from a 410 by relisting.

#![allow(clippy::disallowed_methods)] // a test: it times its own waits

use gw_testkit::cluster::Cluster;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HISTORY: u64 = 20;

#[tokio::test(flavor = "multi_thread")]
async fn python_watch_stream_resumes_and_relists() {
    let mut c = Cluster::start_kube(3, &["--history-revisions", &HISTORY.to_string()])
        .await
        .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/watch_stream.py");
    let mut py = Command::new("python3")
        .arg(&script)
        .arg(c.kubeconfig(1).unwrap())
        .arg(c.kubeconfig(2).unwrap())
        .arg(HISTORY.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut stdin = py.stdin.take().unwrap();
    let mut out = Vec::new();
    for line in BufReader::new(py.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        match line.as_str() {
            "STOP 1" => {
                // The script writes through member 2 next: once it follows a live leader (a write
                // during the election would get a 503, which this script does not retry).
                c.stop(1);
                let leader = c.wait_for_leader(Duration::from_secs(30)).await.unwrap();
                let deadline = Instant::now() + Duration::from_secs(30);
                while c.member_status(2).await.map(|s| s.leader) != Some(leader) {
                    assert!(
                        Instant::now() < deadline,
                        "member 2 never followed {leader}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            "START 1" => c.spawn(1).unwrap(),
            _ => {
                out.push(line);
                continue;
            }
        }
        writeln!(stdin, "ok").unwrap();
    }
    let o = py.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !stderr.contains("No module named 'kubernetes'"),
        "the Python kubernetes client is missing: pip install kubernetes (.ci/deps does)"
    );
    assert!(o.status.success(), "{stderr}\n{out:?}");
    let pass = out.iter().find(|l| l.starts_with("PASS ")).expect("PASS");
    let summary: serde_json::Value = serde_json::from_str(&pass[5..]).unwrap();
    assert_eq!(summary["events"], 8, "{summary}");
    assert!(
        summary["gone"].as_str().unwrap().contains("Expired"),
        "{summary}"
    );
}
