//! Who is on the other end of a connection: the local uid that owns the client's socket.
//!
//! - TCP on loopback: one `SOCK_DIAG_BY_FAMILY` request over a `NETLINK_SOCK_DIAG` socket asks
//!   the kernel for the socket whose local end is the client's address and whose remote end is
//!   our listening address (the exact 4-tuple, no dump), and reads `inet_diag_msg.idiag_uid` —
//!   what `ss -tnep` shows. It needs no privilege. Either end may be IPv4, IPv6 or
//!   IPv4-mapped IPv6 (`::ffff:127.0.0.1`); both are reduced to one form before asking, and the
//!   answer is read in the family the kernel reports, because an IPv6 client socket that
//!   dialled a mapped address is found by an IPv4 query but described with 16-byte mapped
//!   addresses.
//! - Unix sockets: `SO_PEERCRED`.
//!
//! A lookup that fails is an error for the caller to log; the identity is then "unknown"
//! (`uid: None`), never root. User names come from the passwd database (NSS) through a small
//! bounded cache.
//!
//! Uses: nothing else of the crate and libc, nix, tokio, tracing.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The local user behind a connection. `uid: None` means unknown (the lookup failed).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct PeerIdentity {
    pub uid: Option<u32>,
    /// The user's name, when the uid is known and has a passwd entry.
    pub user: Option<String>,
}

impl PeerIdentity {
    /// The identity used when the lookup failed.
    pub(crate) fn unknown() -> Self {
        PeerIdentity::default()
    }

    /// An identity for `uid`, with the name from the process-wide cache.
    pub(crate) fn from_uid(uid: u32) -> Self {
        PeerIdentity {
            uid: Some(uid),
            user: user_name(uid),
        }
    }

    /// The name for messages and reports: the user name, else the uid, else `unknown`.
    pub(crate) fn display_name(&self) -> String {
        match (&self.user, self.uid) {
            (Some(name), _) => name.clone(),
            (None, Some(uid)) => uid.to_string(),
            (None, None) => "unknown".to_owned(),
        }
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.uid, &self.user) {
            (Some(uid), Some(name)) => write!(f, "{uid}({name})"),
            (Some(uid), None) => write!(f, "{uid}"),
            (None, _) => f.write_str("unknown"),
        }
    }
}

/// Looks up the identity of an accepted TCP connection (`local` = our end, `peer` = the
/// client's end, as `TcpStream::local_addr`/`peer_addr` report them). Failures are logged
/// at `warn` and give the unknown identity.
pub(crate) fn identify_tcp(local: SocketAddr, peer: SocketAddr) -> PeerIdentity {
    match tcp_peer_uid(local, peer) {
        Ok(uid) => PeerIdentity::from_uid(uid),
        Err(e) => {
            tracing::warn!(%peer, "cannot tell which local user opened a connection: {e}");
            PeerIdentity::unknown()
        }
    }
}

/// Looks up the identity of an accepted unix-socket connection; failures are logged and
/// give the unknown identity.
#[cfg(test)]
pub(crate) fn identify_unix(stream: &tokio::net::UnixStream) -> PeerIdentity {
    identity_of_unix_peer(unix_peer_uid(stream))
}

/// The identity for a unix-socket peer whose `SO_PEERCRED` uid was read already (the name
/// lookup may block on NSS); failures are logged and give the unknown identity.
pub(crate) fn identity_of_unix_peer(uid: io::Result<u32>) -> PeerIdentity {
    match uid {
        Ok(uid) => PeerIdentity::from_uid(uid),
        Err(e) => {
            tracing::warn!("cannot tell which local user opened a unix-socket connection: {e}");
            PeerIdentity::unknown()
        }
    }
}

/// The uid of the peer of a unix stream socket (`SO_PEERCRED`).
pub(crate) fn unix_peer_uid(stream: &tokio::net::UnixStream) -> io::Result<u32> {
    Ok(stream.peer_cred()?.uid())
}

// Kernel ABI constants (linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h, net/tcp_states.h).
const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x01;
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_sockid`: sport, dport, src[4], dst[4], if, cookie[2].
const SOCKID_LEN: usize = 48;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, id.
const REQ_V2_LEN: usize = 8 + SOCKID_LEN;
/// `struct inet_diag_msg`: family, state, timer, retrans, id, expires, rqueue, wqueue, uid, inode.
const DIAG_MSG_LEN: usize = 4 + SOCKID_LEN + 20;
const DIAG_MSG_UID_OFFSET: usize = 4 + SOCKID_LEN + 12;
const INET_DIAG_NOCOOKIE: u32 = !0;
const TCP_TIME_WAIT: u8 = 6;
const TCP_NEW_SYN_RECV: u8 = 12;
const ALL_STATES: u32 = !0;

/// Maps an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack listener reports
/// for IPv4 clients) to plain IPv4: the client's socket is in the IPv4 tables either way.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// Address bytes in network order, padded to the 16 bytes of `idiag_src`/`idiag_dst`.
fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.copy_from_slice(&v6.octets()),
    }
    out
}

/// The two ends an `inet_diag_sockid` names, in canonical form, read according to the
/// answer's `idiag_family`: an IPv4 client socket is reported as AF_INET with 4-byte
/// addresses, an IPv6 socket that connected to `::ffff:127.0.0.1` as AF_INET6 with the
/// mapped 16-byte addresses. `None` for another family.
fn described_ends(family: u8, id: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let sport = u16::from_be_bytes([id[0], id[1]]);
    let dport = u16::from_be_bytes([id[2], id[3]]);
    let ip = |bytes: &[u8]| -> Option<IpAddr> {
        match libc::c_int::from(family) {
            libc::AF_INET => Some(IpAddr::from(<[u8; 4]>::try_from(&bytes[..4]).ok()?)),
            libc::AF_INET6 => Some(IpAddr::from(<[u8; 16]>::try_from(&bytes[..16]).ok()?)),
            _ => None,
        }
    };
    Some((
        canonical(SocketAddr::new(ip(&id[4..20])?, sport)),
        canonical(SocketAddr::new(ip(&id[20..36])?, dport)),
    ))
}

/// Builds the whole netlink message: `nlmsghdr` + `inet_diag_req_v2` asking for the TCP
/// socket whose local end is `src` and remote end is `dst`.
fn build_request(src: SocketAddr, dst: SocketAddr, seq: u32) -> io::Result<Vec<u8>> {
    let family = match (src.ip(), dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => libc::AF_INET as u8,
        (IpAddr::V6(_), IpAddr::V6(_)) => libc::AF_INET6 as u8,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the two ends of a TCP connection have different address families",
            ))
        }
    };
    let total = NLMSG_HDRLEN + REQ_V2_LEN;
    let mut msg = Vec::with_capacity(total);
    // struct nlmsghdr (host byte order)
    msg.extend_from_slice(&(total as u32).to_ne_bytes());
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid: 0, the kernel fills it in.
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // struct inet_diag_req_v2
    msg.push(family);
    msg.push(libc::IPPROTO_TCP as u8);
    msg.push(0); // idiag_ext: no extensions
    msg.push(0); // pad
    msg.extend_from_slice(&ALL_STATES.to_ne_bytes());
    // struct inet_diag_sockid (ports and addresses big-endian)
    msg.extend_from_slice(&src.port().to_be_bytes());
    msg.extend_from_slice(&dst.port().to_be_bytes());
    msg.extend_from_slice(&addr_bytes(src.ip()));
    msg.extend_from_slice(&addr_bytes(dst.ip()));
    msg.extend_from_slice(&0u32.to_ne_bytes()); // idiag_if: any interface
    msg.extend_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    msg.extend_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    debug_assert_eq!(msg.len(), total);
    Ok(msg)
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes(buf[at..at + 2].try_into().expect("2 bytes"))
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}

/// Reads the uid out of the kernel's answer to [`build_request`]; checks that the socket it
/// describes is the one that was asked for.
fn parse_response(buf: &[u8], seq: u32, src: SocketAddr, dst: SocketAddr) -> io::Result<u32> {
    let mut at = 0;
    while buf.len() - at >= NLMSG_HDRLEN {
        let len = u32_at(buf, at) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() - at {
            return Err(invalid("malformed netlink message from the kernel"));
        }
        let kind = u16_at(buf, at + 4);
        let msg_seq = u32_at(buf, at + 8);
        let payload = &buf[at + NLMSG_HDRLEN..at + len];
        // NLMSG_ALIGN: messages are 4-byte aligned.
        at += (len + 3) & !3;
        if msg_seq != seq {
            continue;
        }
        match kind {
            NLMSG_ERROR => {
                if payload.len() < 4 {
                    return Err(invalid("truncated netlink error from the kernel"));
                }
                let errno = -(u32_at(payload, 0) as i32);
                return Err(if errno == libc::ENOENT {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("the kernel knows no TCP socket {src} -> {dst}"),
                    )
                } else if errno > 0 {
                    io::Error::from_raw_os_error(errno)
                } else {
                    invalid("the kernel acknowledged the socket query without answering it")
                });
            }
            NLMSG_DONE => return Err(invalid("the kernel's answer held no socket")),
            SOCK_DIAG_BY_FAMILY => {
                if payload.len() < DIAG_MSG_LEN {
                    return Err(invalid("truncated inet_diag_msg from the kernel"));
                }
                let state = payload[1];
                let described = described_ends(payload[0], &payload[4..4 + SOCKID_LEN]);
                if described != Some((src, dst)) {
                    return Err(invalid("the kernel described a different socket"));
                }
                // A socket no process holds any more has no owner: time-wait and request
                // sockets, and a closed client's end in FIN-WAIT-2 (a time-wait entry whose
                // state reads FIN_WAIT2), are reported with uid 0 — never take that for
                // root. Such sockets have no inode; every socket a process holds has one.
                let inode = u32_at(payload, DIAG_MSG_UID_OFFSET + 4);
                if state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV || inode == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("the client socket {src} is already closed"),
                    ));
                }
                return Ok(u32_at(payload, DIAG_MSG_UID_OFFSET));
            }
            _ => continue,
        }
    }
    Err(invalid("the kernel's answer held no socket"))
}

/// The uid that owns the client's end of a loopback TCP connection. `local` is the address
/// the connection was accepted on, `peer` the client's address. Works for IPv4, IPv6 and
/// IPv4-mapped IPv6. A blocking call of a few microseconds (the kernel answers during
/// `send`); it cannot hang (one-second receive timeout).
pub(crate) fn tcp_peer_uid(local: SocketAddr, peer: SocketAddr) -> io::Result<u32> {
    // The client's socket: its local end is our peer, its remote end is our local address.
    let src = canonical(peer);
    let dst = canonical(local);
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let request = build_request(src, dst, seq)?;

    // SAFETY: socket(2) with constant arguments; the descriptor is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: valid descriptor, pointer and length of a timeval.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zeroed sockaddr_nl is valid; pid 0 addresses the kernel.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: valid descriptor, buffer and address.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 8192];
    loop {
        // SAFETY: valid descriptor and buffer.
        let got = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
        if got < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let got = got as usize;
        if got > buf.len() {
            return Err(invalid("the kernel's answer did not fit the buffer"));
        }
        return parse_response(&buf[..got], seq, src, dst);
    }
}

/// How many uid→name entries the cache keeps before it starts over.
const NAME_CACHE_CAPACITY: usize = 1024;
/// How long a name (or the absence of one) is trusted.
const NAME_CACHE_TTL: Duration = Duration::from_secs(300);

/// A bounded uid→name cache over the passwd database.
pub(crate) struct UserNameCache {
    entries: Mutex<HashMap<u32, (Instant, Option<String>)>>,
    capacity: usize,
    ttl: Duration,
}

impl UserNameCache {
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        UserNameCache {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            ttl,
        }
    }

    /// The name of `uid` (`None` when it has no passwd entry or the lookup failed).
    pub(crate) fn name(&self, uid: u32) -> Option<String> {
        let now = Instant::now();
        {
            let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, name)) = entries.get(&uid) {
                if now.duration_since(*at) < self.ttl {
                    return name.clone();
                }
            }
        }
        // Looked up without the lock held: NSS may be slow (LDAP, sssd).
        let name = match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
            Ok(user) => user.map(|u| u.name),
            Err(e) => {
                tracing::debug!(uid, "cannot look up the user name: {e}");
                None
            }
        };
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(&uid) {
            entries.retain(|_, (at, _)| now.duration_since(*at) < self.ttl);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(uid, (now, name.clone()));
        name
    }

    /// How many entries are cached (for tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The name of `uid` from the process-wide cache.
pub(crate) fn user_name(uid: u32) -> Option<String> {
    static CACHE: OnceLock<UserNameCache> = OnceLock::new();
    CACHE
        .get_or_init(|| UserNameCache::new(NAME_CACHE_CAPACITY, NAME_CACHE_TTL))
        .name(uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, TcpListener, TcpStream};
    use std::process::Command;

    fn own_uid() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    /// Connects to a fresh listener on `ip` and returns (accepted side local, peer).
    fn loopback_pair(ip: IpAddr) -> Option<(TcpStream, TcpStream)> {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).ok()?;
        let client = TcpStream::connect(listener.local_addr().unwrap()).ok()?;
        let (server, _) = listener.accept().unwrap();
        Some((client, server))
    }

    #[test]
    fn request_layout_matches_the_kernel_headers() {
        let src: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let dst: SocketAddr = "127.0.0.2:8719".parse().unwrap();
        let m = build_request(src, dst, 7).unwrap();
        assert_eq!(m.len(), 72);
        assert_eq!(u32_at(&m, 0), 72);
        assert_eq!(u16_at(&m, 4), SOCK_DIAG_BY_FAMILY);
        assert_eq!(u16_at(&m, 6), NLM_F_REQUEST);
        assert_eq!(u32_at(&m, 8), 7);
        assert_eq!(m[16], libc::AF_INET as u8);
        assert_eq!(m[17], libc::IPPROTO_TCP as u8);
        let id = &m[24..];
        assert_eq!(&id[0..2], &40000u16.to_be_bytes());
        assert_eq!(&id[2..4], &8719u16.to_be_bytes());
        assert_eq!(&id[4..8], &[127, 0, 0, 1]);
        assert_eq!(&id[8..20], &[0; 12]);
        assert_eq!(&id[20..24], &[127, 0, 0, 2]);
        assert_eq!(&id[40..48], &[0xff; 8]);
        let v6 = build_request(
            "[::1]:1".parse().unwrap(),
            "[fe80::2]:2".parse().unwrap(),
            1,
        )
        .unwrap();
        assert_eq!(v6[16], libc::AF_INET6 as u8);
        assert_eq!(&v6[24 + 4..24 + 20], &Ipv6Addr::LOCALHOST.octets());
        assert!(build_request(src, "[::1]:1".parse().unwrap(), 1).is_err());
    }

    #[test]
    fn v4_mapped_addresses_are_looked_up_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5".parse().unwrap();
        assert_eq!(canonical(mapped), "127.0.0.1:5".parse().unwrap());
        let v6: SocketAddr = "[::1]:5".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }

    fn fake_answer(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn parses_answers_and_errors_without_panicking() {
        let src: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let dst: SocketAddr = "127.0.0.1:8719".parse().unwrap();
        let req = build_request(src, dst, 3).unwrap();
        let mut msg = vec![libc::AF_INET as u8, 1, 0, 0];
        msg.extend_from_slice(&req[24..72]);
        msg.extend_from_slice(&[0; 12]);
        msg.extend_from_slice(&1234u32.to_ne_bytes());
        msg.extend_from_slice(&99u32.to_ne_bytes());
        assert_eq!(
            parse_response(&fake_answer(SOCK_DIAG_BY_FAMILY, 3, &msg), 3, src, dst).unwrap(),
            1234
        );
        // Wrong sequence numbers are skipped.
        assert!(parse_response(&fake_answer(SOCK_DIAG_BY_FAMILY, 4, &msg), 3, src, dst).is_err());
        // Another socket than the one asked for.
        let other: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        assert!(parse_response(&fake_answer(SOCK_DIAG_BY_FAMILY, 3, &msg), 3, other, dst).is_err());
        // Time-wait: no owner, never "root".
        let mut tw = msg.clone();
        tw[1] = TCP_TIME_WAIT;
        let e = parse_response(&fake_answer(SOCK_DIAG_BY_FAMILY, 3, &tw), 3, src, dst);
        assert_eq!(e.unwrap_err().kind(), io::ErrorKind::NotFound);
        // No inode: a socket no process holds (a closed client's FIN-WAIT-2 entry).
        let mut orphan = msg.clone();
        let at = DIAG_MSG_UID_OFFSET + 4;
        orphan[at..at + 4].copy_from_slice(&0u32.to_ne_bytes());
        orphan[1] = 5; // TCP_FIN_WAIT2
        let e = parse_response(&fake_answer(SOCK_DIAG_BY_FAMILY, 3, &orphan), 3, src, dst);
        assert_eq!(e.unwrap_err().kind(), io::ErrorKind::NotFound);
        // NLMSG_ERROR with -ENOENT.
        let mut err = (-libc::ENOENT).to_ne_bytes().to_vec();
        err.extend_from_slice(&req[..16]);
        let e = parse_response(&fake_answer(NLMSG_ERROR, 3, &err), 3, src, dst).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let mut err = (-libc::EPERM).to_ne_bytes().to_vec();
        err.extend_from_slice(&req[..16]);
        let e = parse_response(&fake_answer(NLMSG_ERROR, 3, &err), 3, src, dst).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        // Truncated and garbage input.
        let full = fake_answer(SOCK_DIAG_BY_FAMILY, 3, &msg);
        for cut in 0..full.len() {
            assert!(parse_response(&full[..cut], 3, src, dst).is_err());
        }
        let mut bad = full.clone();
        bad[0..4].copy_from_slice(&5u32.to_ne_bytes());
        assert!(parse_response(&bad, 3, src, dst).is_err());
        let short = fake_answer(SOCK_DIAG_BY_FAMILY, 3, &msg[..20]);
        assert!(parse_response(&short, 3, src, dst).is_err());
    }

    #[test]
    fn ipv4_connection_resolves_to_own_uid() {
        let (client, server) = loopback_pair(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap();
        let uid = tcp_peer_uid(server.local_addr().unwrap(), server.peer_addr().unwrap()).unwrap();
        assert_eq!(uid, own_uid());
        let identity = identify_tcp(server.local_addr().unwrap(), server.peer_addr().unwrap());
        assert_eq!(identity.uid, Some(own_uid()));
        drop(client);
    }

    #[test]
    fn ipv6_connection_resolves_to_own_uid() {
        let Some((_client, server)) = loopback_pair(IpAddr::V6(Ipv6Addr::LOCALHOST)) else {
            eprintln!("skipped: no IPv6 loopback here");
            return;
        };
        let uid = tcp_peer_uid(server.local_addr().unwrap(), server.peer_addr().unwrap()).unwrap();
        assert_eq!(uid, own_uid());
    }

    #[test]
    fn dual_stack_listener_with_ipv4_client_resolves() {
        let socket = match std::net::TcpListener::bind("[::]:0") {
            Ok(s) => s,
            Err(_) => {
                eprintln!("skipped: no IPv6 here");
                return;
            }
        };
        let port = socket.local_addr().unwrap().port();
        let Ok(_client) = TcpStream::connect(("127.0.0.1", port)) else {
            eprintln!("skipped: the [::] listener is IPv6-only here");
            return;
        };
        let (server, _) = socket.accept().unwrap();
        assert!(server.peer_addr().unwrap().is_ipv6());
        let uid = tcp_peer_uid(server.local_addr().unwrap(), server.peer_addr().unwrap()).unwrap();
        assert_eq!(uid, own_uid());
    }

    /// Every form the kernel can report for the two ends of a loopback connection: an IPv4
    /// listener with an IPv4 client or an IPv6 client that dialled `::ffff:127.0.0.1` (the
    /// listener sees plain IPv4, the client's socket is AF_INET6), an IPv6 listener bound to
    /// `::ffff:127.0.0.1` (it sees mapped addresses) with either client, and `::1`.
    #[test]
    fn every_address_form_resolves_to_own_uid() {
        let cases = [
            ("127.0.0.1:0", "127.0.0.1"),
            ("127.0.0.1:0", "[::ffff:127.0.0.1]"),
            ("[::ffff:127.0.0.1]:0", "127.0.0.1"),
            ("[::ffff:127.0.0.1]:0", "[::ffff:127.0.0.1]"),
            ("[::1]:0", "[::1]"),
        ];
        for (listen, dial) in cases {
            let listener = TcpListener::bind(listen)
                .unwrap_or_else(|e| panic!("cannot listen on {listen}: {e}"));
            let port = listener.local_addr().unwrap().port();
            let client = TcpStream::connect(format!("{dial}:{port}"))
                .unwrap_or_else(|e| panic!("cannot dial {dial}:{port}: {e}"));
            let (server, _) = listener.accept().unwrap();
            let (local, peer) = (server.local_addr().unwrap(), server.peer_addr().unwrap());
            let uid = tcp_peer_uid(local, peer).unwrap_or_else(|e| {
                panic!(
                    "{listen} dialled as {dial} (server sees {local} <- {peer}, client is {:?}): {e}",
                    client.local_addr()
                )
            });
            assert_eq!(uid, own_uid(), "{listen} dialled as {dial}");
            // The ends may also be given in the other form than the socket reports.
            let flip = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
                IpAddr::V6(_) => canonical(a),
            };
            assert_eq!(tcp_peer_uid(flip(local), peer).unwrap(), own_uid());
            assert_eq!(tcp_peer_uid(local, flip(peer)).unwrap(), own_uid());
        }
    }

    #[test]
    fn answers_in_either_family_name_the_same_socket() {
        let src: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let dst: SocketAddr = "127.0.0.1:8719".parse().unwrap();
        let mut v4 = vec![0u8; SOCKID_LEN];
        v4[0..2].copy_from_slice(&40000u16.to_be_bytes());
        v4[2..4].copy_from_slice(&8719u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[127, 0, 0, 1]);
        v4[20..24].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(described_ends(libc::AF_INET as u8, &v4), Some((src, dst)));
        let mut mapped = v4.clone();
        let m = Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets();
        mapped[4..20].copy_from_slice(&m);
        mapped[20..36].copy_from_slice(&m);
        assert_eq!(
            described_ends(libc::AF_INET6 as u8, &mapped),
            Some((src, dst))
        );
        // The mapped bytes read as IPv4 are not the socket asked for.
        assert_ne!(
            described_ends(libc::AF_INET as u8, &mapped),
            Some((src, dst))
        );
        assert_eq!(described_ends(libc::AF_UNIX as u8, &v4), None);
    }

    /// A client that closed its socket before the proxy asked (its end is then an orphan or a
    /// time-wait entry, reported with uid 0 and no inode) is unknown, never root.
    #[test]
    fn a_client_that_already_closed_is_unknown_never_root() {
        for (listen, dial) in [
            ("127.0.0.1:0", "127.0.0.1"),
            ("127.0.0.1:0", "[::ffff:127.0.0.1]"),
            ("[::1]:0", "[::1]"),
        ] {
            let listener = TcpListener::bind(listen).unwrap();
            let port = listener.local_addr().unwrap().port();
            let client = TcpStream::connect(format!("{dial}:{port}")).unwrap();
            drop(client);
            let (server, _) = listener.accept().unwrap();
            // Let the FIN exchange finish: the client's end leaves the socket table.
            std::thread::sleep(Duration::from_millis(50));
            let e = tcp_peer_uid(server.local_addr().unwrap(), server.peer_addr().unwrap())
                .expect_err("a closed client socket has no owner");
            assert_eq!(
                e.kind(),
                io::ErrorKind::NotFound,
                "{listen} via {dial}: {e}"
            );
        }
    }

    #[test]
    fn the_orientation_matters() {
        // Swapping the ends names the server's own socket, which is also ours here; a
        // 4-tuple that does not exist at all is a clean NotFound.
        let (_client, server) = loopback_pair(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap();
        let local = server.local_addr().unwrap();
        let mut wrong = server.peer_addr().unwrap();
        wrong.set_port(if wrong.port() == 1 { 2 } else { 1 });
        let e = tcp_peer_uid(local, wrong).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        let e = tcp_peer_uid("[::1]:1".parse().unwrap(), "[::1]:2".parse().unwrap());
        assert!(e.is_err());
        assert_eq!(identify_tcp(local, wrong), PeerIdentity::unknown());
    }

    #[test]
    fn connection_from_nobody_resolves_to_nobody() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to run a client as nobody");
            return;
        }
        let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else {
            eprintln!("skipped: no user nobody");
            return;
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        use std::os::unix::process::CommandExt;
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{port}; sleep 3"))
            .uid(nobody.uid.as_raw())
            .gid(nobody.gid.as_raw())
            .spawn()
            .expect("bash");
        listener.set_nonblocking(false).unwrap();
        let (server, _) = listener.accept().unwrap();
        let uid = tcp_peer_uid(server.local_addr().unwrap(), server.peer_addr().unwrap());
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(uid.unwrap(), nobody.uid.as_raw());
        let identity = PeerIdentity::from_uid(nobody.uid.as_raw());
        assert_eq!(identity.user.as_deref(), Some("nobody"));
        assert_eq!(identity.to_string(), format!("{}(nobody)", nobody.uid));
    }

    #[tokio::test]
    async fn unix_socket_pair_resolves_to_own_uid() {
        let (a, _b) = tokio::net::UnixStream::pair().unwrap();
        assert_eq!(unix_peer_uid(&a).unwrap(), own_uid());
        assert_eq!(identify_unix(&a).uid, Some(own_uid()));
    }

    #[test]
    fn display_and_names() {
        let known = PeerIdentity {
            uid: Some(1000),
            user: Some("alice".into()),
        };
        assert_eq!(known.to_string(), "1000(alice)");
        assert_eq!(known.display_name(), "alice");
        let nameless = PeerIdentity {
            uid: Some(4242),
            user: None,
        };
        assert_eq!(nameless.to_string(), "4242");
        assert_eq!(nameless.display_name(), "4242");
        assert_eq!(PeerIdentity::unknown().to_string(), "unknown");
        assert_eq!(PeerIdentity::unknown().display_name(), "unknown");
        assert_eq!(PeerIdentity::from_uid(0).user.as_deref(), Some("root"));
    }

    #[test]
    fn name_cache_is_bounded() {
        let cache = UserNameCache::new(4, Duration::from_secs(60));
        for uid in 0..20 {
            cache.name(4_000_000 + uid);
            assert!(cache.len() <= 4);
        }
        assert_eq!(cache.name(0).as_deref(), Some("root"));
        assert_eq!(cache.name(0).as_deref(), Some("root"));
        assert_eq!(cache.name(3_999_999), None);
    }
}
