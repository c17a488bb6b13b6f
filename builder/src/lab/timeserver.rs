//! Time for the lab's nodes: an SNTP server (RFC 4330 server mode) on the
//! gateway address inside the namespace, answering with this host's clock.
//! A Pi has no RTC and the image's clock starts at its build epoch; with a
//! server at the cluster's `ntp:` address, chrony on the nodes steps the clock
//! within seconds instead of waiting out the agent's NTP timeout.
//!
//! Why not chronyd on the host: installing chrony replaces the host's own time
//! service (systemd-timesyncd); this server only answers and never touches the
//! host's clock. Run by `up` as `piha lab serve-time` inside the namespace.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

/// Seconds from the NTP epoch (1900) to the Unix epoch.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
/// LI 0, version 4, mode 4 (server).
const SERVER_HEADER: u8 = 0b0010_0100;
/// Mode 3: a client's request.
const CLIENT_MODE: u8 = 3;

/// Serves until killed.
pub fn serve(address: Ipv4Addr) -> anyhow::Result<()> {
    let socket = UdpSocket::bind(SocketAddrV4::new(address, 123)).with_context(|| format!("binding {address}:123"))?;
    eprintln!("piha lab: serving time on {address}:123");
    let mut buf = [0u8; 512];
    loop {
        let (n, peer) = socket.recv_from(&mut buf).context("receiving")?;
        let received = now();
        if let Some(reply) = answer(&buf[..n], received, now()) {
            let _ = socket.send_to(&reply, peer);
        }
    }
}

/// The host's clock as an NTP timestamp (seconds and 2^-32 fractions since 1900).
fn now() -> u64 {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() + NTP_UNIX_OFFSET;
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// The reply to one request, or `None` for anything that is not a client
/// request. Stratum 1 with reference "LOCL": the host's clock is the source.
fn answer(request: &[u8], received: u64, transmit: u64) -> Option<[u8; 48]> {
    if request.len() < 48 || request[0] & 0b111 != CLIENT_MODE {
        return None;
    }
    let version = (request[0] >> 3) & 0b111;
    let mut r = [0u8; 48];
    r[0] = (SERVER_HEADER & !0b0011_1000) | (version << 3);
    r[1] = 1; // stratum
    r[2] = request[2]; // poll, as asked
    r[3] = 0xEC; // precision 2^-20 s
    // root delay 0, root dispersion ~1 ms
    r[8..12].copy_from_slice(&(65u32).to_be_bytes());
    r[12..16].copy_from_slice(b"LOCL");
    r[16..24].copy_from_slice(&received.to_be_bytes()); // reference time
    r[24..32].copy_from_slice(&request[40..48]); // originate = the client's transmit
    r[32..40].copy_from_slice(&received.to_be_bytes());
    r[40..48].copy_from_slice(&transmit.to_be_bytes());
    Some(r)
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::time::Duration;

    use super::{NTP_UNIX_OFFSET, answer};

    fn request() -> [u8; 48] {
        let mut q = [0u8; 48];
        q[0] = 0b0010_0011; // v4, client
        q[40..48].copy_from_slice(&0x1122_3344_5566_7788u64.to_be_bytes());
        q
    }

    #[test]
    fn a_client_request_gets_a_server_reply_echoing_its_timestamp() {
        let t = (NTP_UNIX_OFFSET + 1_700_000_000) << 32;
        let r = answer(&request(), t, t + 1).expect("reply");
        assert_eq!(r[0] & 0b111, 4, "server mode");
        assert_eq!((r[0] >> 6) & 0b11, 0, "no leap warning: the clock is synchronised");
        assert_eq!(r[1], 1);
        assert_eq!(&r[24..32], &0x1122_3344_5566_7788u64.to_be_bytes());
        assert_eq!(u64::from_be_bytes(r[40..48].try_into().unwrap()), t + 1);
    }

    #[test]
    fn anything_but_a_client_request_is_ignored() {
        let mut q = request();
        q[0] = 0b0010_0100;
        assert!(answer(&q, 0, 0).is_none());
        assert!(answer(&q[..20], 0, 0).is_none());
    }

    #[test]
    fn sntp_round_trip_on_loopback() {
        // The real socket path, on loopback only: a server thread on an
        // ephemeral port, one client request, the reply's time is now.
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let (n, peer) = server.recv_from(&mut buf).unwrap();
            let r = answer(&buf[..n], super::now(), super::now()).unwrap();
            server.send_to(&r, peer).unwrap();
        });
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        client.send_to(&request(), addr).unwrap();
        let mut buf = [0u8; 48];
        client.recv_from(&mut buf).unwrap();
        let secs = u64::from_be_bytes(buf[40..48].try_into().unwrap()) >> 32;
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(secs.abs_diff(unix + NTP_UNIX_OFFSET) <= 2, "{secs}");
    }
}
