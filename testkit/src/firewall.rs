//! Network partitions on one machine: iptables DROP rules between loopback addresses, in a chain of
//! their own (jumped to from INPUT) that is emptied on heal and removed on drop, so that runs side by
//! side never touch each other's rules. Needs root and the iptables package.

use std::process::Command;

fn iptables(args: &[&str]) -> Result<(), String> {
    let out = Command::new("iptables")
        .args(["-w"])
        .args(args)
        .output()
        .map_err(|e| format!("iptables: {e} (install the iptables package)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// An iptables rule dropping packets from `a` to `b` (either empty: any address).
fn rule<'a>(op: &'a str, chain: &'a str, a: &'a str, b: &'a str) -> Vec<&'a str> {
    let mut r = vec![op, chain];
    if !a.is_empty() {
        r.extend(["-s", a]);
    }
    if !b.is_empty() {
        r.extend(["-d", b]);
    }
    r.extend(["-j", "DROP"]);
    r
}

/// This process's chain of DROP rules.
pub struct Firewall {
    chain: String,
}

impl Firewall {
    /// Creates the chain `PREFIX_PID` and jumps to it from INPUT.
    pub fn new(prefix: &str) -> Result<Firewall, String> {
        let chain = format!("{prefix}_{}", std::process::id());
        iptables(&["-N", &chain])?;
        let fw = Firewall { chain };
        iptables(&["-I", "INPUT", "-j", &fw.chain])?;
        Ok(fw)
    }

    /// Drops every packet from `a` to `b` (an empty address: any).
    pub fn drop(&self, a: &str, b: &str) -> Result<(), String> {
        iptables(&rule("-A", &self.chain, a, b))
    }

    /// Whether the rule a→b is in place.
    pub fn is_dropped(&self, a: &str, b: &str) -> bool {
        iptables(&rule("-C", &self.chain, a, b)).is_ok()
    }

    /// Removes every rule.
    pub fn heal(&self) -> Result<(), String> {
        iptables(&["-F", &self.chain])
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        let _ = iptables(&["-D", "INPUT", "-j", &self.chain]);
        let _ = iptables(&["-F", &self.chain]);
        let _ = iptables(&["-X", &self.chain]);
    }
}
