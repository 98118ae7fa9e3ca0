//! The tokio driver: owns the UDP socket, the TCP listener and connections, and the clock, and
//! feeds the sans-IO [`UserAgent`]. One task runs the agent; everything reaches it through
//! channels, so the agent itself needs no locks. Commands come from [`Sip`] handles; events go
//! out on the receiver [`Sip::start`] returns.
//!
//! TCP: messages are framed by Content-Length ([`crate::frame`]); a connection accepted from a
//! peer is used for the responses and requests back to that address; a transmit to an address
//! without a connection opens one. A read or write failure closes the connection; transmits
//! that fail are reported to the agent as transport errors. [`TcpLimits`] bound the
//! connections (in total and per source, checked at accept) and how long they may idle or take
//! over one message; the connection tasks report what they read, and the driver's
//! [`Connections`] table, on the driver's clock, says which to refuse and which to close.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rsip::common::Transport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::sdp::LocalMedia;
use crate::tcp::Connections;
pub use crate::tcp::TcpLimits;
use crate::transaction::TxKey;
use crate::ua::{CallKey, Dialog, Outgoing, UaConfig, UaError, UaEvent, UaStats, UserAgent};
use crate::{Frame, MAX_MESSAGE_BYTES};

/// A largest-datagram receive buffer (anything bigger is not SIP over UDP).
const UDP_BUFFER: usize = 65_535;

enum Command {
    Invite(Outgoing, oneshot::Sender<Result<CallKey, UaError>>),
    Ring(CallKey, oneshot::Sender<Result<(), UaError>>),
    Answer(CallKey, LocalMedia, oneshot::Sender<Result<(), UaError>>),
    Reject(CallKey, u16, oneshot::Sender<Result<(), UaError>>),
    Hangup(CallKey, oneshot::Sender<Result<(), UaError>>),
    EndLeft(Box<Dialog>, oneshot::Sender<Result<CallKey, UaError>>),
    Draining(bool),
    Unavailable(bool),
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
    /// stack with the default [`TcpLimits`]. `config.advertised` is replaced by the bound
    /// address when its port is 0. `allow_source` decides which peers may send INVITE and
    /// OPTIONS (others get `403`).
    pub async fn start(
        bind: SocketAddr,
        config: UaConfig,
        allow_source: impl Fn(IpAddr) -> bool + Send + 'static,
    ) -> io::Result<(Sip, mpsc::UnboundedReceiver<UaEvent>)> {
        Self::start_with_limits(bind, config, TcpLimits::default(), allow_source).await
    }

    /// [`Sip::start`] with these bounds on TCP connections.
    pub async fn start_with_limits(
        bind: SocketAddr,
        mut config: UaConfig,
        limits: TcpLimits,
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
            links: HashMap::new(),
            tcp_table: Connections::new(limits),
            tcp_reported: 0,
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

    /// Ends a call an earlier run left (see [`UserAgent::end_left`]).
    pub async fn end_left(&self, dialog: Dialog) -> Result<CallKey, UaError> {
        self.ask(|r| Command::EndLeft(Box::new(dialog), r)).await?
    }

    pub fn set_draining(&self, draining: bool) {
        let _ = self.commands.send(Command::Draining(draining));
    }

    /// See [`UserAgent::set_unavailable`].
    pub fn set_unavailable(&self, unavailable: bool) {
        let _ = self.commands.send(Command::Unavailable(unavailable));
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

/// What TCP connection tasks tell the driver (`u64`: the connection's id).
enum TcpInput {
    /// A message framed from the connection with this peer.
    Message(SocketAddr, u64, Vec<u8>),
    /// The first bytes of a message that is not complete yet have arrived.
    Partial(u64),
    /// An RFC 5626 keep-alive ping (answered already).
    Ping(u64),
    /// A transmit of this transaction could not be written (connect or write failure).
    Failed(TxKey),
    /// The connection is gone.
    Closed(u64),
}

/// Bytes for a connection to write, and the transaction to blame if it cannot.
type TcpWrite = (Vec<u8>, Option<TxKey>);

struct Driver {
    ua: UserAgent,
    udp: Arc<UdpSocket>,
    /// Writers of open TCP connections by peer address, with the connection's id (a closing
    /// connection removes its entry only if a newer one has not replaced it).
    conns: HashMap<SocketAddr, (u64, mpsc::UnboundedSender<TcpWrite>)>,
    /// Every open connection's peer, and the sender that closes it (dropping it closes it
    /// too: a stopped driver leaves no connection behind).
    links: HashMap<u64, (SocketAddr, oneshot::Sender<()>)>,
    /// Caps and deadlines of the open connections.
    tcp_table: Connections,
    /// The connection count last given to the gauge.
    tcp_reported: usize,
    next_conn: u64,
    /// What the TCP connection tasks report (see [`TcpInput`]).
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
            let deadline = match (self.ua.poll_timeout(), self.tcp_table.poll_timeout()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
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
                    TcpInput::Message(from, id, bytes) => {
                        let now = Instant::now();
                        self.tcp_table.handle_message(now, id);
                        self.ua.handle_stream_message(now, &bytes, from)
                    }
                    TcpInput::Partial(id) => self.tcp_table.handle_partial(Instant::now(), id),
                    TcpInput::Ping(id) => self.tcp_table.handle_ping(Instant::now(), id),
                    TcpInput::Failed(key) => self.transport_error(key),
                    TcpInput::Closed(id) => {
                        self.tcp_table.handle_closed(id);
                        self.forget(id);
                    }
                },
                a = tcp.accept() => match a {
                    Ok((stream, from)) => self.accept(stream, from),
                    Err(e) => {
                        // Out of file descriptors, most likely: do not spin on it.
                        tracing::warn!(error = %e, "TCP accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                () = sleep => {
                    let now = Instant::now();
                    self.ua.handle_timeout(now);
                    self.tcp_table.handle_timeout(now);
                    self.close_expired();
                }
            }
            self.flush();
            if self.tcp_table.len() != self.tcp_reported {
                self.tcp_reported = self.tcp_table.len();
                metrics::gauge!("callflow_sip_tcp_connections").set(self.tcp_reported as f64);
            }
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
            Command::EndLeft(dialog, r) => {
                let _ = r.send(self.ua.end_left(now, *dialog));
            }
            Command::Draining(d) => self.ua.set_draining(d),
            Command::Unavailable(u) => self.ua.set_unavailable(u),
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
            Some((id, w)) => match w.send((bytes, tx)) {
                Ok(()) => {
                    // A message we send keeps the connection in use, as one we receive does.
                    self.tcp_table.handle_message(Instant::now(), *id);
                    return true;
                }
                Err(mpsc::error::SendError((bytes, _))) => bytes,
            },
            None => bytes,
        };
        // No connection: open one; the write waits for it in the connection's task.
        let (w_tx, mut w_rx) = mpsc::unbounded_channel();
        let _ = w_tx.send((bytes, tx));
        let id = self.conn_id();
        self.tcp_table.handle_connect(Instant::now(), id);
        self.conns.insert(to, (id, w_tx.clone()));
        let (close_tx, mut close) = oneshot::channel();
        self.links.insert(id, (to, close_tx));
        let inbound = self.inbound.0.clone();
        tokio::spawn(async move {
            let connected = tokio::select! {
                r = TcpStream::connect(to) => r,
                _ = &mut close => Err(io::Error::other("closed while connecting")),
            };
            match connected {
                Ok(stream) => connection(stream, to, id, w_tx, w_rx, inbound, close).await,
                Err(e) => {
                    tracing::debug!(%to, error = %e, "TCP connect failed");
                    let _ = inbound.send(TcpInput::Closed(id));
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

    /// A peer connected: adopt the connection, or close it at once when a cap refuses it (no
    /// SIP answer: nothing has been said yet, and a flood of refusals should cost little).
    fn accept(&mut self, stream: TcpStream, from: SocketAddr) {
        let id = self.conn_id();
        if let Err(why) = self.tcp_table.handle_accept(Instant::now(), id, from.ip()) {
            metrics::counter!("callflow_sip_tcp_refused_total", "reason" => why.label())
                .increment(1);
            tracing::debug!(%from, reason = why.label(), "TCP connection refused");
            return;
        }
        let (w_tx, w_rx) = mpsc::unbounded_channel();
        self.conns.insert(from, (id, w_tx.clone()));
        let (close_tx, close) = oneshot::channel();
        self.links.insert(id, (from, close_tx));
        tokio::spawn(connection(
            stream,
            from,
            id,
            w_tx,
            w_rx,
            self.inbound.0.clone(),
            close,
        ));
    }

    /// Closes the connections whose deadline has passed (idle, or a message too slow).
    fn close_expired(&mut self) {
        while let Some((id, why)) = self.tcp_table.poll_close() {
            metrics::counter!("callflow_sip_tcp_closed_total", "reason" => why.label())
                .increment(1);
            if let Some((peer, close)) = self.forget(id) {
                tracing::debug!(%peer, reason = why.label(), "closing TCP connection");
                let _ = close.send(());
            }
        }
    }

    /// Drops the driver's hold on connection `id`: later transmits to its peer open a new
    /// connection. Returns the peer and the sender that closes the connection.
    fn forget(&mut self, id: u64) -> Option<(SocketAddr, oneshot::Sender<()>)> {
        let (peer, close) = self.links.remove(&id)?;
        if self.conns.get(&peer).is_some_and(|(c, _)| *c == id) {
            self.conns.remove(&peer);
        }
        Some((peer, close))
    }

    fn conn_id(&mut self) -> u64 {
        self.next_conn += 1;
        self.next_conn
    }
}

/// One TCP connection: writes what the driver sends (reporting what it cannot write), reads
/// and frames what the peer sends (see [`read`]) until the peer closes, a read fails, the
/// framing breaks, or the driver closes it (`close` fires or its sender is dropped).
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    pong: mpsc::UnboundedSender<TcpWrite>,
    mut writes: mpsc::UnboundedReceiver<TcpWrite>,
    inbound: mpsc::UnboundedSender<TcpInput>,
    close: oneshot::Receiver<()>,
) {
    let (rd, wr) = stream.into_split();
    let failures = inbound.clone();
    // Set when the driver closes the connection: a write in progress (to a peer that does not
    // read) is abandoned, and nothing more is written.
    let (stop_tx, mut stop) = watch::channel(false);
    // Ends when the driver and this reader have dropped their senders (connection closed).
    let writer = tokio::spawn(async move {
        // `None` once broken or stopped, so the socket closes with the reader's half.
        let mut wr = Some(wr);
        while let Some((bytes, key)) = writes.recv().await {
            if let Some(w) = wr.as_mut() {
                let written = tokio::select! {
                    r = w.write_all(&bytes) => r.is_ok(),
                    _ = stop.wait_for(|s| *s) => false,
                };
                if !written {
                    wr = None;
                }
            }
            if wr.is_none()
                && let Some(key) = key
            {
                let _ = failures.send(TcpInput::Failed(key));
            }
        }
    });
    let closed_by_driver = tokio::select! {
        () = read(rd, peer, id, &pong, &inbound) => false,
        _ = close => true,
    };
    if closed_by_driver {
        let _ = stop_tx.send(true);
    }
    drop(pong);
    let _ = inbound.send(TcpInput::Closed(id));
    // Whatever the driver queued before it heard of the close is written or reported failed.
    let _ = writer.await;
}

/// Reads and frames what the peer sends, until it closes, a read fails or the stream cannot
/// be framed (too big, or not SIP). Tells the driver of every message, of every RFC 5626
/// keep-alive ping (answered here with CRLF), and of the first bytes of a message that has not
/// arrived whole, for its timeout. The buffer holds at most one partial message, bounded by
/// [`MAX_MESSAGE_BYTES`] (plus one read).
async fn read(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    peer: SocketAddr,
    id: u64,
    pong: &mpsc::UnboundedSender<TcpWrite>,
    inbound: &mpsc::UnboundedSender<TcpInput>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    // The driver knows that the message in `buf` has begun.
    let mut begun = false;
    loop {
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        loop {
            match crate::frame(&buf) {
                Ok(Frame::Message(len)) => {
                    let msg: Vec<u8> = buf.drain(..len).collect();
                    begun = false;
                    if inbound.send(TcpInput::Message(peer, id, msg)).is_err() {
                        return;
                    }
                }
                Ok(Frame::KeepAlive(len)) => {
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        let _ = pong.send((b"\r\n".to_vec(), None));
                        let _ = inbound.send(TcpInput::Ping(id));
                    }
                    buf.drain(..len);
                }
                Ok(Frame::Incomplete) if buf.len() <= MAX_MESSAGE_BYTES => break,
                // Too big or unframeable: the stream cannot be resynchronised.
                _ => return,
            }
        }
        // What is left starts a message (leading CR/LF bytes were dropped above).
        if !buf.is_empty() && !begun {
            begun = true;
            let _ = inbound.send(TcpInput::Partial(id));
        }
    }
}
