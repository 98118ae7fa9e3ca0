//! The tokio driver: owns the UDP socket, the TCP listener and connections, and the clock, and
//! feeds the sans-IO [`UserAgent`]. One task runs the agent; everything reaches it through
//! channels, so the agent itself needs no locks. Commands come from [`Sip`] handles; events go
//! out on the receiver [`Sip::start`] returns.
//!
//! TCP: messages are framed by Content-Length ([`crate::frame`]); a connection accepted from a
//! peer is used for the responses and requests back to that address; a transmit to an address
//! without a connection opens one. A read or write failure closes the connection; transmits
//! that fail are reported to the agent as transport errors.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use rsip::common::Transport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::sdp::LocalMedia;
use crate::transaction::TxKey;
use crate::ua::{CallKey, Outgoing, UaConfig, UaError, UaEvent, UaStats, UserAgent};
use crate::{Frame, MAX_MESSAGE_BYTES};

/// A largest-datagram receive buffer (anything bigger is not SIP over UDP).
const UDP_BUFFER: usize = 65_535;

enum Command {
    Invite(Outgoing, oneshot::Sender<Result<CallKey, UaError>>),
    Ring(CallKey, oneshot::Sender<Result<(), UaError>>),
    Answer(CallKey, LocalMedia, oneshot::Sender<Result<(), UaError>>),
    Reject(CallKey, u16, oneshot::Sender<Result<(), UaError>>),
    Hangup(CallKey, oneshot::Sender<Result<(), UaError>>),
    Draining(bool),
    Stats(oneshot::Sender<UaStats>),
}

/// A handle on the running SIP stack. Cheap to clone; the stack stops when every handle is
/// dropped (or with [`Sip::shutdown`]).
#[derive(Clone)]
pub struct Sip {
    commands: mpsc::UnboundedSender<Command>,
    local: SocketAddr,
    task: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Sip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sip").field("local", &self.local).finish()
    }
}

impl Sip {
    /// Binds UDP and TCP on `bind` (port 0 picks one; TCP gets the same port) and starts the
    /// stack. `config.advertised` is replaced by the bound address when its port is 0.
    /// `allow_source` decides which peers may send INVITE and OPTIONS (others get `403`).
    pub async fn start(
        bind: SocketAddr,
        mut config: UaConfig,
        allow_source: impl Fn(IpAddr) -> bool + Send + 'static,
    ) -> io::Result<(Sip, mpsc::UnboundedReceiver<UaEvent>)> {
        let udp = UdpSocket::bind(bind).await?;
        let local = udp.local_addr()?;
        let tcp = TcpListener::bind(local).await?;
        if config.advertised.port() == 0 || config.advertised.ip().is_unspecified() {
            config.advertised = local;
        }
        let mut ua = UserAgent::new(config);
        ua.set_source_filter(allow_source);
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let driver = Driver {
            ua,
            udp: Arc::new(udp),
            conns: HashMap::new(),
            next_conn: 0,
            inbound: mpsc::unbounded_channel(),
            events: ev_tx,
        };
        let task = tokio::spawn(driver.run(tcp, cmd_rx));
        Ok((
            Sip {
                commands: cmd_tx,
                local,
                task: Arc::new(std::sync::Mutex::new(Some(task))),
            },
            ev_rx,
        ))
    }

    /// The bound address (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, UaError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).map_err(|_| UaError::Stopped)?;
        rx.await.map_err(|_| UaError::Stopped)
    }

    pub async fn invite(&self, out: Outgoing) -> Result<CallKey, UaError> {
        self.ask(|r| Command::Invite(out, r)).await?
    }

    pub async fn ring(&self, call: CallKey) -> Result<(), UaError> {
        self.ask(|r| Command::Ring(call, r)).await?
    }

    pub async fn answer(&self, call: CallKey, media: LocalMedia) -> Result<(), UaError> {
        self.ask(|r| Command::Answer(call, media, r)).await?
    }

    pub async fn reject(&self, call: CallKey, status: u16) -> Result<(), UaError> {
        self.ask(|r| Command::Reject(call, status, r)).await?
    }

    pub async fn hangup(&self, call: CallKey) -> Result<(), UaError> {
        self.ask(|r| Command::Hangup(call, r)).await?
    }

    pub fn set_draining(&self, draining: bool) {
        let _ = self.commands.send(Command::Draining(draining));
    }

    pub async fn stats(&self) -> Result<UaStats, UaError> {
        self.ask(Command::Stats).await
    }

    /// Stops the stack now (live calls are abandoned; drain first for a graceful stop).
    pub fn shutdown(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

/// What TCP connection tasks tell the driver.
enum TcpInput {
    /// A message framed from the connection with this peer.
    Message(SocketAddr, Vec<u8>),
    /// A transmit of this transaction could not be written (connect or write failure).
    Failed(TxKey),
    /// Connection `id` with this peer is gone.
    Closed(SocketAddr, u64),
}

/// Bytes for a connection to write, and the transaction to blame if it cannot.
type TcpWrite = (Vec<u8>, Option<TxKey>);

struct Driver {
    ua: UserAgent,
    udp: Arc<UdpSocket>,
    /// Writers of open TCP connections by peer address, with the connection's id (a closing
    /// connection removes its entry only if a newer one has not replaced it).
    conns: HashMap<SocketAddr, (u64, mpsc::UnboundedSender<TcpWrite>)>,
    next_conn: u64,
    /// Messages read from TCP connections, and connections closing (`None`).
    inbound: (
        mpsc::UnboundedSender<TcpInput>,
        mpsc::UnboundedReceiver<TcpInput>,
    ),
    events: mpsc::UnboundedSender<UaEvent>,
}

impl Driver {
    async fn run(mut self, tcp: TcpListener, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut buf = vec![0u8; UDP_BUFFER];
        let udp = self.udp.clone();
        loop {
            let deadline = self.ua.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = udp.recv_from(&mut buf) => match r {
                    Ok((n, from)) => self.ua.handle_datagram(Instant::now(), &buf[..n], from),
                    // ICMP errors surface here on some platforms: nothing to do but go on.
                    Err(e) => tracing::debug!(error = %e, "UDP receive error"),
                },
                c = commands.recv() => match c {
                    Some(c) => self.command(c),
                    None => break,
                },
                Some(input) = self.inbound.1.recv() => match input {
                    TcpInput::Message(from, bytes) => {
                        self.ua.handle_stream_message(Instant::now(), &bytes, from)
                    }
                    TcpInput::Failed(key) => self.transport_error(key),
                    TcpInput::Closed(from, id) => {
                        if self.conns.get(&from).is_some_and(|(c, _)| *c == id) {
                            self.conns.remove(&from);
                        }
                    }
                },
                a = tcp.accept() => match a {
                    Ok((stream, from)) => self.adopt(stream, from),
                    Err(e) => {
                        // Out of file descriptors, most likely: do not spin on it.
                        tracing::warn!(error = %e, "TCP accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                },
                () = sleep => self.ua.handle_timeout(Instant::now()),
            }
            self.flush();
        }
    }

    fn command(&mut self, c: Command) {
        let now = Instant::now();
        match c {
            Command::Invite(out, r) => {
                let _ = r.send(self.ua.invite(now, out));
            }
            Command::Ring(call, r) => {
                let _ = r.send(self.ua.ring(now, call));
            }
            Command::Answer(call, media, r) => {
                let _ = r.send(self.ua.answer(now, call, media));
            }
            Command::Reject(call, status, r) => {
                let _ = r.send(self.ua.reject(now, call, status));
            }
            Command::Hangup(call, r) => {
                let _ = r.send(self.ua.hangup(now, call));
            }
            Command::Draining(d) => self.ua.set_draining(d),
            Command::Stats(r) => {
                let _ = r.send(self.ua.stats());
            }
        }
    }

    /// Sends what the agent queued and passes its events on.
    fn flush(&mut self) {
        while let Some(t) = self.ua.poll_transmit() {
            let ok = match t.transport {
                Transport::Udp => match self.udp.try_send_to(&t.bytes, t.to) {
                    Ok(_) => true,
                    // A full socket buffer drops the datagram, as the network might; the
                    // transaction layer retransmits.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
                    Err(e) => {
                        tracing::debug!(to = %t.to, error = %e, "UDP send failed");
                        false
                    }
                },
                _ => self.send_tcp(t.to, t.bytes, t.tx),
            };
            if !ok && let Some(key) = t.tx {
                self.transport_error(key);
            }
        }
        while let Some(e) = self.ua.poll_event() {
            let _ = self.events.send(e);
        }
    }

    fn transport_error(&mut self, key: TxKey) {
        self.ua.handle_transport_error(Instant::now(), key);
    }

    /// Hands bytes to the connection with `to`, opening one if needed. Failures come back
    /// later as [`TcpInput::Failed`].
    fn send_tcp(&mut self, to: SocketAddr, bytes: Vec<u8>, tx: Option<TxKey>) -> bool {
        let bytes = match self.conns.get(&to) {
            Some((_, w)) => match w.send((bytes, tx)) {
                Ok(()) => return true,
                Err(mpsc::error::SendError((bytes, _))) => bytes,
            },
            None => bytes,
        };
        // No connection: open one; the write waits for it in the connection's task.
        let (w_tx, mut w_rx) = mpsc::unbounded_channel();
        let _ = w_tx.send((bytes, tx));
        let id = self.conn_id();
        self.conns.insert(to, (id, w_tx.clone()));
        let inbound = self.inbound.0.clone();
        tokio::spawn(async move {
            match TcpStream::connect(to).await {
                Ok(stream) => connection(stream, to, id, w_tx, w_rx, inbound).await,
                Err(e) => {
                    tracing::debug!(%to, error = %e, "TCP connect failed");
                    let _ = inbound.send(TcpInput::Closed(to, id));
                    drop(w_tx);
                    while let Some((_, key)) = w_rx.recv().await {
                        if let Some(key) = key {
                            let _ = inbound.send(TcpInput::Failed(key));
                        }
                    }
                }
            }
        });
        true
    }

    fn adopt(&mut self, stream: TcpStream, from: SocketAddr) {
        let (w_tx, w_rx) = mpsc::unbounded_channel();
        let id = self.conn_id();
        self.conns.insert(from, (id, w_tx.clone()));
        tokio::spawn(connection(
            stream,
            from,
            id,
            w_tx,
            w_rx,
            self.inbound.0.clone(),
        ));
    }

    fn conn_id(&mut self) -> u64 {
        self.next_conn += 1;
        self.next_conn
    }
}

/// One TCP connection: writes what the driver sends (reporting what it cannot write), reads
/// and frames what the peer sends, and answers RFC 5626 keep-alive pings (CRLFCRLF) with CRLF.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    pong: mpsc::UnboundedSender<TcpWrite>,
    mut writes: mpsc::UnboundedReceiver<TcpWrite>,
    inbound: mpsc::UnboundedSender<TcpInput>,
) {
    let (mut rd, mut wr) = stream.into_split();
    let failures = inbound.clone();
    // Ends when the driver and this reader have dropped their senders (connection closed).
    let writer = tokio::spawn(async move {
        let mut broken = false;
        while let Some((bytes, key)) = writes.recv().await {
            if !broken && wr.write_all(&bytes).await.is_err() {
                broken = true;
            }
            if broken && let Some(key) = key {
                let _ = failures.send(TcpInput::Failed(key));
            }
        }
    });
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    'read: loop {
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        loop {
            match crate::frame(&buf) {
                Ok(Frame::Message(len)) => {
                    let msg: Vec<u8> = buf.drain(..len).collect();
                    if inbound.send(TcpInput::Message(peer, msg)).is_err() {
                        break 'read;
                    }
                }
                Ok(Frame::KeepAlive(len)) => {
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        let _ = pong.send((b"\r\n".to_vec(), None));
                    }
                    buf.drain(..len);
                }
                Ok(Frame::Incomplete) if buf.len() <= MAX_MESSAGE_BYTES => break,
                // Too big or unframeable: the stream cannot be resynchronised.
                _ => break 'read,
            }
        }
    }
    drop(pong);
    let _ = inbound.send(TcpInput::Closed(peer, id));
    // Whatever the driver queued before it heard of the close is written or reported failed.
    let _ = writer.await;
}
