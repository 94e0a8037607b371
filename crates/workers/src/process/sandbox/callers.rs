//! Whether a TCP connection to marina comes from one of its workers.
//!
//! Until a key exists the internal API is open to whoever reaches it (as in Buntime), and
//! workers reach it too: they are told `RUNTIME_API_URL`. A hostile app could then create the
//! first admin key. The internal API asks [`CallerProbe::classify`] about a keyless caller in
//! that mode only, so the hot path never pays for it.
//!
//! Workers share marina's network namespace, so a worker's end of the connection is a socket in
//! this machine's `/proc/net/tcp` (or `tcp6`): the entry whose local address is the peer marina
//! accepted and whose remote address is marina's side. Its `uid` column is the uid that created
//! the socket while the socket is open; once its owner closed it the kernel lists it with uid 0
//! and inode 0 (an orphan), which says nothing of who it was — a worker can send a request and
//! close at once, and hyper still answers what it read — so an orphaned socket is never cleared
//! ([`Caller::Unknown`]):
//! - workers run as `RUNTIME_WORKER_USER` or a uid from `RUNTIME_WORKER_UIDS` (marina is root):
//!   a socket of such a uid is a worker's, any other is not (they cannot change uid:
//!   `no_new_privs`, no supplementary groups);
//! - workers run as marina's own uid (marina is not root): the uid says nothing, so the socket's
//!   inode is looked for among the descriptors of marina's descendants and of the processes in
//!   marina's worker cgroups (which hold what left the process group). A worker process whose
//!   descriptors cannot be read (it made itself non-dumpable) cannot be cleared: the answer is
//!   then [`Caller::Unknown`], which the API refuses.
//!
//! No entry means the peer is not on this machine (or in another network namespace): not a
//! worker. A table that exists but cannot be read clears nobody ([`Caller::Unknown`]); a missing
//! `tcp6` (IPv6 off) is an empty table.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Who is on the other end of a connection, as far as the internal API cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Not a process of this machine's network namespace.
    Elsewhere,
    /// A local process that is not a worker (the operator's client, marina itself).
    NotWorker,
    /// A worker's process; why it is known to be one.
    Worker(String),
    /// Possibly a worker: it could not be cleared (why).
    Unknown(String),
}

/// Which uids workers run as.
#[derive(Debug, Clone)]
pub(crate) enum WorkerUids {
    /// marina's own (marina is not root).
    Own,
    /// One shared user.
    One(u32),
    /// One per app, from a range.
    Range { first: u32, count: u32 },
}

/// Classifies connections; cheap to clone.
#[derive(Debug, Clone)]
pub struct CallerProbe {
    uids: WorkerUids,
    own_pid: i32,
    /// The worker cgroups' parent as it appears in `/proc/<pid>/cgroup` (`/marina`).
    cgroup_parent: Option<String>,
}

impl CallerProbe {
    pub(crate) fn new(uids: WorkerUids, cgroup_parent: Option<&str>) -> Self {
        let cgroup_parent = cgroup_parent.map(|p| {
            let p = p.trim().trim_end_matches('/');
            let p = p.strip_prefix("/sys/fs/cgroup").unwrap_or(p);
            format!("/{}", p.trim_start_matches('/'))
        });
        Self { uids, own_pid: std::process::id() as i32, cgroup_parent }
    }

    /// Who holds the other end of the connection marina accepted from `peer` on `local`.
    /// Blocking (reads `/proc`); only worth calling while the internal API is open.
    pub fn classify(&self, peer: SocketAddr, local: SocketAddr) -> Caller {
        let (uid, inode) = match find_socket(peer, local) {
            Ok(Some(found)) => found,
            Ok(None) => return Caller::Elsewhere,
            // Without the tables nobody can be cleared: the API stays closed to keyless callers
            // rather than open to workers.
            Err(why) => return Caller::Unknown(why),
        };
        self.decide(uid, inode)
    }

    /// [`CallerProbe::classify`]'s answer for a socket found with `uid` and `inode`.
    fn decide(&self, uid: u32, inode: u64) -> Caller {
        if inode == 0 {
            return Caller::Unknown("its socket is already closed, so its owner cannot be found".into());
        }
        match self.uids {
            WorkerUids::One(w) if uid == w => {
                Caller::Worker(format!("its socket belongs to the worker user (uid {uid})"))
            }
            WorkerUids::Range { first, count } if uid >= first && uid - first < count => {
                Caller::Worker(format!("its socket belongs to a worker uid ({uid})"))
            }
            WorkerUids::One(_) | WorkerUids::Range { .. } => Caller::NotWorker,
            WorkerUids::Own if uid != nix::unistd::geteuid().as_raw() => Caller::NotWorker,
            WorkerUids::Own => self.holder(inode),
        }
    }

    /// Workers share marina's uid: is the socket `inode` held by one of their processes?
    fn holder(&self, inode: u64) -> Caller {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Caller::Unknown("/proc cannot be read".into());
        };
        let mut parents = std::collections::HashMap::new();
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            if let Some(ppid) = parent_of(pid) {
                parents.insert(pid, ppid);
            }
        }
        let target = format!("socket:[{inode}]");
        for &pid in parents.keys() {
            if pid == self.own_pid || !self.is_worker_process(pid, &parents) {
                continue;
            }
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                // Gone since the scan, or non-dumpable (its descriptors are hidden from us).
                if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    return Caller::Unknown(format!("worker process {pid} hides its descriptors"));
                }
                continue;
            };
            for fd in fds.flatten() {
                if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()) {
                    return Caller::Worker(format!("its socket is held by worker process {pid}"));
                }
            }
        }
        Caller::NotWorker
    }

    /// A descendant of marina, or a process in one of marina's worker cgroups.
    fn is_worker_process(&self, pid: i32, parents: &std::collections::HashMap<i32, i32>) -> bool {
        let mut at = pid;
        for _ in 0..64 {
            let Some(&ppid) = parents.get(&at) else { break };
            if ppid == self.own_pid {
                return true;
            }
            if ppid <= 1 {
                break;
            }
            at = ppid;
        }
        let Some(parent) = &self.cgroup_parent else { return false };
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|groups| {
            groups.lines().filter_map(|l| l.splitn(3, ':').nth(2)).any(|path| {
                path.strip_prefix(parent.as_str()).is_some_and(|rest| rest.starts_with('/') && rest.len() > 1)
            })
        })
    }
}

/// The parent pid, from `/proc/<pid>/stat` (after the command name, which may hold spaces).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// The `(uid, inode)` of the socket of this machine whose local address is `peer` and remote
/// address `local`: the connecting side of a connection marina accepted. An error when neither
/// table exists but cannot be read (a missing `tcp6`, IPv6 off, is an empty table). Read line by
/// line up to the match, so a machine with many sockets costs no table-sized buffer.
fn find_socket(peer: SocketAddr, local: SocketAddr) -> Result<Option<(u32, u64)>, String> {
    use std::io::BufRead;
    let (peer, local) = (unmapped(peer), unmapped(local));
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let table = match std::fs::File::open(file) {
            Ok(f) => std::io::BufReader::new(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && file.ends_with('6') => continue,
            Err(e) => return Err(format!("{file} cannot be read ({e}), so no caller can be told apart")),
        };
        for line in table.lines().skip(1) {
            let line = line.map_err(|e| format!("{file} cannot be read ({e}), so no caller can be told apart"))?;
            if let Some(entry) = parse_entry(&line)
                && entry.local == peer
                && entry.remote == local
            {
                return Ok(Some((entry.uid, entry.inode)));
            }
        }
    }
    Ok(None)
}

/// The address as `/proc/net/tcp{,6}` lists it: an IPv4-mapped IPv6 address as IPv4, and no
/// IPv6 scope or flow label (the tables have neither, and `SocketAddrV6` equality compares
/// them: a link-local peer with a scope id would never match its line).
fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => SocketAddr::new(IpAddr::V6(*v6.ip()), v6.port()),
        },
        SocketAddr::V4(_) => addr,
    }
}

struct Entry {
    local: SocketAddr,
    remote: SocketAddr,
    uid: u32,
    inode: u64,
}

/// One line of `/proc/net/tcp{,6}`: `sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...`.
fn parse_entry(line: &str) -> Option<Entry> {
    let mut fields = line.split_ascii_whitespace();
    let local = parse_addr(fields.nth(1)?)?;
    let remote = parse_addr(fields.next()?)?;
    let uid = fields.nth(4)?.parse().ok()?;
    let inode = fields.nth(1)?.parse().ok()?;
    Some(Entry { local: unmapped(local), remote: unmapped(remote), uid, inode })
}

/// `0100007F:1F90` (127.0.0.1:8080): each 32-bit word is printed in host byte order.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok().map(u32::to_ne_bytes);
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_orphaned_socket_is_never_cleared_and_a_scope_never_hides_a_line() {
        let probe = CallerProbe::new(WorkerUids::One(65534), None);
        // A worker that sent its request and closed: listed with uid 0 and inode 0.
        assert!(matches!(probe.decide(0, 0), Caller::Unknown(_)));
        assert!(matches!(probe.decide(65534, 0), Caller::Unknown(_)));
        assert!(matches!(probe.decide(65534, 7), Caller::Worker(_)));
        assert_eq!(probe.decide(0, 7), Caller::NotWorker);
        let scoped = SocketAddr::V6(std::net::SocketAddrV6::new("fe80::1".parse().unwrap(), 8000, 3, 4));
        assert_eq!(unmapped(scoped), "[fe80::1]:8000".parse::<SocketAddr>().unwrap());
    }

    #[test]
    fn proc_net_tcp_lines_parse() {
        let v4 = "   3: 0100007F:A1B2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000   998        0 123456 1 0000000000000000 20 4 30 10 -1";
        let e = parse_entry(v4).unwrap();
        assert_eq!(e.local, "127.0.0.1:41394".parse().unwrap());
        assert_eq!(e.remote, "127.0.0.1:8080".parse().unwrap());
        assert_eq!((e.uid, e.inode), (998, 123456));
        // ::ffff:127.0.0.1 as tcp6 prints it, seen as IPv4.
        let v6 = "   0: 0000000000000000FFFF00000100007F:A1B2 00000000000000000000000001000000:1F90 01 00000000:00000000 00:00000000 00000000     0        0 77 1";
        let e = parse_entry(v6).unwrap();
        assert_eq!(e.local, "127.0.0.1:41394".parse().unwrap());
        assert_eq!(e.remote, "[::1]:8080".parse().unwrap());
        assert_eq!((e.uid, e.inode), (0, 77));
        assert!(parse_entry("  sl  local_address rem_address   st").is_none());
    }

    #[test]
    fn a_connection_of_this_process_is_found_and_not_a_workers() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, peer) = listener.accept().unwrap();
        let local = listener.local_addr().unwrap();
        let (uid, inode) = find_socket(peer, local).unwrap().expect("the client's socket is listed");
        assert_eq!(uid, nix::unistd::geteuid().as_raw());
        assert_ne!(inode, 0);
        let own = CallerProbe::new(WorkerUids::Own, None);
        assert_eq!(own.classify(peer, local), Caller::NotWorker, "marina's own process is not a worker");
        let shared = CallerProbe::new(WorkerUids::One(uid), None);
        assert!(matches!(shared.classify(peer, local), Caller::Worker(_)));
        let other = CallerProbe::new(WorkerUids::Range { first: uid.wrapping_add(1), count: 10 }, None);
        assert_eq!(other.classify(peer, local), Caller::NotWorker);
        let nowhere: SocketAddr = "192.0.2.1:9".parse().unwrap();
        assert_eq!(own.classify(nowhere, local), Caller::Elsewhere);
        drop(client);
    }

    #[test]
    fn a_child_process_s_connection_is_a_workers_when_workers_share_marina_s_uid() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        // A descendant of this process (as a worker is of marina's) holds the client socket.
        let mut child = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{}; sleep 30", local.port()))
            .spawn()
            .unwrap();
        let (_server, peer) = listener.accept().unwrap();
        let own = CallerProbe::new(WorkerUids::Own, None);
        let verdict = own.classify(peer, local);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(matches!(&verdict, Caller::Worker(why) if why.contains(&child.id().to_string())), "{verdict:?}");
    }
}
