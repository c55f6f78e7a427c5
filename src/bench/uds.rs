//! `uds` and `tcp`: a Unix stream socket (or a TCP loopback connection with `TCP_NODELAY`)
//! carrying the same bincode frames as the ring, each behind the same 8-byte frame header.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use super::{checksum, mismatch, payload, BenchMsg, Opts};
use crate::ring::layout::{frame_word, kind, parse_frame_word};
use crate::{codec, Error};

/// Encodes a frame (header + bincode) into `buf`.
fn frame(buf: &mut Vec<u8>, m: &BenchMsg<'_>) -> Result<(), Error> {
    buf.clear();
    buf.extend_from_slice(&[0; 8]);
    codec::encode_append(m, buf)?;
    let len = (buf.len() - 8) as u32;
    buf[..8].copy_from_slice(&frame_word(kind::MSG, len).to_le_bytes());
    Ok(())
}

/// Reads one frame into `buf` and returns its payload.
fn read_frame<'b>(r: &mut impl Read, buf: &'b mut Vec<u8>) -> Result<&'b [u8], Error> {
    let mut h = [0u8; 8];
    if let Err(e) = r.read_exact(&mut h) {
        return Err(if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::Disconnected
        } else {
            e.into()
        });
    }
    let (_, len) = parse_frame_word(u64::from_le_bytes(h)).ok_or_else(|| mismatch("uds header"))?;
    buf.resize(len as usize, 0);
    r.read_exact(buf)?;
    Ok(buf)
}

/// A connected byte stream: Unix or TCP.
pub(super) enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

/// A benchmark socket operation gives up after this long (a stuck peer fails the run with a
/// timeout error instead of hanging it).
const IO_TIMEOUT: Duration = Duration::from_secs(30);

impl Stream {
    /// Blocking, with [`IO_TIMEOUT`] on every read and write.
    fn with_timeouts(self) -> std::io::Result<Stream> {
        match &self {
            Stream::Unix(s) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.set_write_timeout(Some(IO_TIMEOUT))?;
            }
            Stream::Tcp(s) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.set_write_timeout(Some(IO_TIMEOUT))?;
            }
        }
        Ok(self)
    }

    fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

pub(super) struct UdsSide {
    w: Stream,
    r: BufReader<Stream>,
    wbuf: Vec<u8>,
    rbuf: Vec<u8>,
    payload: Vec<u8>,
    expect: u64,
}

pub(super) fn accept(l: UnixListener, o: &Opts) -> Result<UdsSide, Error> {
    l.set_nonblocking(true)?;
    let (s, _) = super::accept_within(|| l.accept())?;
    side(Stream::Unix(s), o)
}

/// TCP: the peer connects to `l` (bound on loopback); Nagle is off on both ends.
pub(super) fn accept_tcp(l: TcpListener, o: &Opts) -> Result<UdsSide, Error> {
    l.set_nonblocking(true)?;
    let (s, _) = super::accept_within(|| l.accept())?;
    s.set_nodelay(true)?;
    side(Stream::Tcp(s), o)
}

fn side(s: Stream, o: &Opts) -> Result<UdsSide, Error> {
    let s = s.with_timeouts()?;
    let payload = payload(o.size);
    Ok(UdsSide {
        r: BufReader::with_capacity(256 << 10, s.try_clone()?),
        w: s,
        wbuf: Vec::new(),
        rbuf: Vec::new(),
        expect: checksum(&payload),
        payload,
    })
}

impl UdsSide {
    pub(super) fn roundtrips(&mut self, n: u64) -> Result<Vec<u64>, Error> {
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let t0 = Instant::now();
            frame(&mut self.wbuf, &BenchMsg::Echo(&self.payload))?;
            self.w.write_all(&self.wbuf)?;
            let b = read_frame(&mut self.r, &mut self.rbuf)?;
            let ok = matches!(codec::decode_borrowed(b)?, BenchMsg::Echo(b) if checksum(b) == self.expect);
            out.push(t0.elapsed().as_nanos() as u64);
            if !ok {
                return Err(mismatch("uds echo"));
            }
        }
        Ok(out)
    }

    pub(super) fn stream(&mut self, n: u64) -> Result<Duration, Error> {
        let t0 = Instant::now();
        frame(
            &mut self.wbuf,
            &BenchMsg::Stream {
                n,
                size: self.payload.len() as u32,
            },
        )?;
        self.w.write_all(&self.wbuf)?;
        let mut got = 0u64;
        loop {
            let b = read_frame(&mut self.r, &mut self.rbuf)?;
            match codec::decode_borrowed(b)? {
                BenchMsg::Data(b) if checksum(b) == self.expect => got += 1,
                BenchMsg::Done(sum) if got == n && sum == self.expect.wrapping_mul(n) => {
                    return Ok(t0.elapsed())
                }
                _ => return Err(mismatch("uds stream")),
            }
        }
    }
}

pub(super) fn peer(o: &Opts, socket: &Path) -> Result<(), Error> {
    let s = if o.transport == super::Transport::Tcp {
        // For tcp the "socket" is the listener's loopback address.
        let addr = socket
            .to_str()
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            .ok_or_else(|| mismatch("tcp peer address"))?;
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        Stream::Tcp(s)
    } else {
        Stream::Unix(UnixStream::connect(socket)?)
    };
    let s = s.with_timeouts()?;
    let mut r = BufReader::with_capacity(256 << 10, s.try_clone()?);
    let mut w = BufWriter::with_capacity(256 << 10, s);
    let mut rbuf = Vec::new();
    let mut wbuf = Vec::new();
    loop {
        let b = match read_frame(&mut r, &mut rbuf) {
            Ok(b) => b,
            Err(Error::Disconnected) => return Ok(()),
            Err(e) => return Err(e),
        };
        match codec::decode_borrowed(b)? {
            BenchMsg::Echo(b) => {
                frame(&mut wbuf, &BenchMsg::Echo(b))?;
                w.write_all(&wbuf)?;
                w.flush()?;
            }
            BenchMsg::Stream { n, size } => {
                let p = payload(size as usize);
                for _ in 0..n {
                    frame(&mut wbuf, &BenchMsg::Data(&p))?;
                    w.write_all(&wbuf)?;
                }
                frame(&mut wbuf, &BenchMsg::Done(checksum(&p).wrapping_mul(n)))?;
                w.write_all(&wbuf)?;
                w.flush()?;
            }
            _ => return Err(mismatch("uds peer")),
        }
    }
}
