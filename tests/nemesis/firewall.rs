//! Cutting links between node processes with nftables: one table per run, named after the
//! process and the run, holding one output-hook chain whose rules drop what one loopback
//! address sends to another. Loopback packets pass the output hook once, so a rule
//! `ip saddr A ip daddr B drop` cuts exactly the direction A -> B (TCP over it stalls both
//! ways: B's segments are never acknowledged). The table is removed when dropped, also
//! when the test panics.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

pub struct Firewall {
    table: String,
}

impl Firewall {
    /// A fresh table, or why nftables cannot be used here (not installed, not root).
    pub fn new(run: &str) -> Result<Firewall, String> {
        remove_stale_tables();
        let table = format!("quorra_nemesis_{}_{run}", std::process::id());
        nft(&format!(
            "add table inet {table}\nadd chain inet {table} out {{ type filter hook output priority 0 ; policy accept ; }}"
        ))?;
        Ok(Firewall { table })
    }

    /// Drops every packet `from` sends to `to` (one direction).
    pub fn cut(&self, from: IpAddr, to: IpAddr) {
        nft(&format!("add rule inet {} out ip saddr {from} ip daddr {to} drop", self.table)).expect("nft add rule");
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut_both(&self, a: IpAddr, b: IpAddr) {
        self.cut(a, b);
        self.cut(b, a);
    }

    /// Removes every cut.
    pub fn heal(&self) {
        nft(&format!("flush chain inet {} out", self.table)).expect("nft flush");
    }

    /// The rules in force (for a failure report).
    pub fn rules(&self) -> String {
        let out = Command::new("nft").args(["list", "table", "inet", &self.table]).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        let _ = nft(&format!("delete table inet {}", self.table));
    }
}

/// Deletes the tables of runs whose process is gone (killed before it could clean up).
fn remove_stale_tables() {
    let Ok(out) = Command::new("nft").args(["list", "tables"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.strip_prefix("table inet ") else { continue };
        let Some(pid) = name.strip_prefix("quorra_nemesis_").and_then(|r| r.split('_').next()) else { continue };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = nft(&format!("delete table inet {name}"));
        }
    }
}

/// Runs an nft script (commands separated by newlines).
fn nft(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e}"))?;
    child.stdin.take().expect("piped").write_all(script.as_bytes()).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("nft {script:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}
