//! A plain epoll byte-echo server: the baseline `remora bench --mode raw --target` is compared
//! against (issue 10). No io_uring, no protocol: one thread per `THREADS`, each with its own
//! SO_REUSEPORT listener and a level-triggered epoll loop that echoes what it reads.
//!
//! ```sh
//! cargo run --release -p remora-uring --example epoll_echo -- 127.0.0.1:9911 1
//! remora bench --target 127.0.0.1:9911 --mode raw --connections 1000 --inflight 1
//! ```

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:9911".into())
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let threads: usize = args.next().and_then(|t| t.parse().ok()).unwrap_or(1);
    let mut handles = Vec::new();
    for _ in 0..threads.max(1) {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        socket.set_nonblocking(true)?;
        let listener: std::net::TcpListener = socket.into();
        handles.push(std::thread::spawn(move || serve(listener)));
    }
    eprintln!("epoll echo on {addr}, {threads} thread(s)");
    for h in handles {
        h.join().expect("echo thread")?;
    }
    Ok(())
}

fn ctl(epoll: RawFd, op: i32, fd: RawFd, events: u32) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events,
        u64: fd as u64,
    };
    // SAFETY: valid descriptors and a live event struct.
    if unsafe { libc::epoll_ctl(epoll, op, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn serve(listener: std::net::TcpListener) -> io::Result<()> {
    // SAFETY: no pointers; a non-negative result is a new descriptor.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        return Err(io::Error::last_os_error());
    }
    let lfd = listener.as_raw_fd();
    ctl(epoll, libc::EPOLL_CTL_ADD, lfd, libc::EPOLLIN as u32)?;
    let mut conns: HashMap<RawFd, (TcpStream, Vec<u8>)> = HashMap::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `events` has room for the count given.
        let n = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in &events[..n as usize] {
            let fd = ev.u64 as RawFd;
            if fd == lfd {
                while let Ok((stream, _)) = listener.accept() {
                    stream.set_nonblocking(true)?;
                    stream.set_nodelay(true)?;
                    let cfd = stream.into_raw_fd();
                    // SAFETY: `cfd` came from `into_raw_fd` just above.
                    let stream = unsafe { TcpStream::from_raw_fd(cfd) };
                    ctl(epoll, libc::EPOLL_CTL_ADD, cfd, libc::EPOLLIN as u32)?;
                    conns.insert(cfd, (stream, Vec::new()));
                }
                continue;
            }
            let Some((stream, pending)) = conns.get_mut(&fd) else {
                continue;
            };
            let mut gone = false;
            if ev.events & libc::EPOLLOUT as u32 != 0 && !pending.is_empty() {
                match stream.write(pending) {
                    Ok(k) => {
                        pending.drain(..k);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => gone = true,
                }
                if pending.is_empty() && !gone {
                    ctl(epoll, libc::EPOLL_CTL_MOD, fd, libc::EPOLLIN as u32)?;
                }
            }
            if ev.events & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0
                && pending.is_empty()
                && !gone
            {
                match stream.read(&mut buf) {
                    Ok(0) => gone = true,
                    Ok(k) => match stream.write(&buf[..k]) {
                        Ok(w) if w == k => {}
                        Ok(w) => {
                            pending.extend_from_slice(&buf[w..k]);
                            ctl(epoll, libc::EPOLL_CTL_MOD, fd, libc::EPOLLOUT as u32)?;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            pending.extend_from_slice(&buf[..k]);
                            ctl(epoll, libc::EPOLL_CTL_MOD, fd, libc::EPOLLOUT as u32)?;
                        }
                        Err(_) => gone = true,
                    },
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => gone = true,
                }
            }
            if gone {
                let _ = ctl(epoll, libc::EPOLL_CTL_DEL, fd, 0);
                conns.remove(&fd);
            }
        }
    }
}
