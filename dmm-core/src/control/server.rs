// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The control socket server: an accept thread per VM and a thread per
//! connection. Threads hold only a `Weak<Vm>`, so the server never keeps a
//! VM alive; dropping the [`Server`] (from `Vm::shutdown`) stops every thread
//! and removes the socket.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::protocol::{
    encode_err, encode_event, encode_ok, guest_ranges, Behind, Empty, ErrorBody, ErrorCode, Event,
    HintRound, MemoryErrorBody, NumPages, PageAnswer, PoolAnswer, PoolChanged, PoolReached,
    Request, StatesAnswer, StatsAnswer, MAX_LINE, MAX_PAGE_STATES,
};
use crate::vm::{BalloonPush, GuestStats, Service, Vm, VmEvent};

/// Connections served at once; more are answered with an error and closed.
const MAX_CONNECTIONS: usize = 64;
/// How often an idle event forwarder checks whether to stop.
const FORWARD_POLL: Duration = Duration::from_millis(100);
/// Balloon pages are 4 KiB whatever the VM's page size.
const BALLOON_PAGE: u64 = 4096;

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another server listens on the path.
    #[error("control socket {0} is in use by a running server")]
    InUse(PathBuf),
    /// The path exists and is not a socket.
    #[error("control socket path {0} exists and is not a socket")]
    NotSocket(PathBuf),
    /// A system call on the path failed.
    #[error("control socket {path}: {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl From<ServerError> for crate::Error {
    fn from(e: ServerError) -> Self {
        match e {
            ServerError::InUse(_) | ServerError::NotSocket(_) => {
                crate::Error::InvalidArgument(e.to_string())
            }
            ServerError::Io { op, path, source } => crate::Error::Os {
                op,
                source: io::Error::new(
                    source.kind(),
                    format!("control socket {}: {source}", path.display()),
                ),
            },
        }
    }
}

/// State shared by the server's threads.
#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    conns: Mutex<Vec<Conn>>,
}

#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    thread: JoinHandle<()>,
}

/// A running control socket. Dropping it stops it.
#[derive(Debug)]
pub struct Server {
    path: PathBuf,
    /// `(st_dev, st_ino)` of the socket file we created.
    file_id: (u64, u64),
    shared: Arc<Shared>,
    wake: UnixStream,
    accept: Mutex<Option<JoinHandle<()>>>,
}

/// Starts serving `vm` on `path` (see [`Server::start`]) and registers the
/// server with the VM, so that `Vm::shutdown` stops it.
pub fn serve(vm: &Arc<Vm>, path: &Path) -> crate::Result<()> {
    let server = Server::start(Arc::downgrade(vm), path)?;
    vm.add_service(Box::new(server));
    Ok(())
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ServerError + 'a {
    move |source| ServerError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Removes a stale socket at `path`; refuses a live one or a non-socket.
fn clear_path(path: &Path) -> Result<(), ServerError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("stat", path)(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::NotSocket(path.to_owned()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ServerError::InUse(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            log::info!("removing stale control socket {}", path.display());
            std::fs::remove_file(path).map_err(io_err("remove stale socket", path))
        }
        Err(e) => Err(io_err("probe existing socket", path)(e)),
    }
}

impl Server {
    /// Binds `path` (mode 0600) and starts the accept thread. A live socket
    /// at `path` is an error; a stale one is replaced.
    pub fn start(vm: Weak<Vm>, path: &Path) -> Result<Server, ServerError> {
        clear_path(path)?;
        let listener = UnixListener::bind(path).map_err(io_err("bind", path))?;
        // Until chmod the socket has the umask's mode; with the usual 022
        // others cannot connect (connecting needs write permission).
        let set_up = || -> Result<_, (&'static str, io::Error)> {
            let chmod = std::fs::Permissions::from_mode(0o600);
            std::fs::set_permissions(path, chmod).map_err(|e| ("chmod 0600", e))?;
            listener
                .set_nonblocking(true)
                .map_err(|e| ("set non-blocking", e))?;
            let meta = std::fs::symlink_metadata(path).map_err(|e| ("stat", e))?;
            let (wake, wake_rx) = UnixStream::pair().map_err(|e| ("socketpair", e))?;
            let shared = Arc::new(Shared::default());
            let thread_shared = Arc::clone(&shared);
            let accept = crate::thread::spawn("dmm-control", move || {
                accept_loop(&listener, &wake_rx, &vm, &thread_shared);
            })
            .map_err(|e| ("spawn accept thread", e))?;
            Ok((meta, wake, shared, accept))
        };
        let (meta, wake, shared, accept) = set_up().map_err(|(op, e)| {
            let _ = std::fs::remove_file(path);
            io_err(op, path)(e)
        })?;
        Ok(Server {
            path: path.to_owned(),
            file_id: (meta.dev(), meta.ino()),
            shared,
            wake,
            accept: Mutex::new(Some(accept)),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops all threads and removes the socket file; idempotent.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = (&self.wake).write_all(b"x");
        let accept = self
            .accept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = accept {
            join(t);
        }
        let conns = std::mem::take(
            &mut *self
                .shared
                .conns
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for c in &conns {
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
        }
        for c in conns {
            join(c.thread);
        }
        // Remove the file only if it is still the socket we created.
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.file_id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

impl Service for Server {
    fn stop(&self) {
        Server::stop(self);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Joins `t` unless it is the calling thread (a connection thread may drop
/// the last reference to the VM, and with it the server).
fn join(t: JoinHandle<()>) {
    if t.thread().id() != thread::current().id() {
        let _ = t.join();
    }
}

/// Waits until `a` or `b` is readable.
fn wait_readable(a: &impl AsRawFd, b: &impl AsRawFd) -> io::Result<()> {
    let mut fds = [
        libc::pollfd {
            fd: a.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfds for the whole call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn accept_loop(listener: &UnixListener, wake: &UnixStream, vm: &Weak<Vm>, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        if let Err(e) = wait_readable(listener, wake) {
            log::error!("control socket: poll: {e}");
            return;
        }
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                log::warn!("control socket: accept: {e}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if let Err(e) = add_connection(stream, vm, shared) {
            log::warn!("control socket: connection refused: {e}");
        }
    }
}

fn add_connection(mut stream: UnixStream, vm: &Weak<Vm>, shared: &Arc<Shared>) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    let mut conns = shared.conns.lock().unwrap_or_else(PoisonError::into_inner);
    conns.retain(|c| !c.thread.is_finished());
    if conns.len() >= MAX_CONNECTIONS {
        let msg = format!("too many connections (at most {MAX_CONNECTIONS})");
        let _ = writeln!(
            stream,
            "{}",
            encode_err(&ErrorBody::new(ErrorCode::State, msg.clone()))
        );
        return Err(io::Error::other(msg));
    }
    let handle = stream.try_clone()?;
    let (vm, worker_shared) = (Weak::clone(vm), Arc::clone(shared));
    let thread = crate::thread::spawn("dmm-control-conn", move || {
        serve_connection(stream, &vm, &worker_shared);
    })?;
    conns.push(Conn {
        stream: handle,
        thread,
    });
    Ok(())
}

type Writer = Arc<Mutex<UnixStream>>;

fn write_line(w: &Writer, line: &str) -> io::Result<()> {
    let mut buf = String::with_capacity(line.len() + 1);
    buf.push_str(line);
    buf.push('\n');
    w.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .write_all(buf.as_bytes())
}

/// One line read from a connection.
enum Line {
    /// A complete line (newline stripped) in the buffer.
    Text,
    /// A line longer than [`MAX_LINE`] was skipped.
    TooLong,
    /// End of stream.
    Eof,
}

/// Reads one line of at most [`MAX_LINE`] bytes into `buf`.
fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<Line> {
    buf.clear();
    let limit = u64::try_from(MAX_LINE + 1).unwrap_or(u64::MAX);
    let n = r.by_ref().take(limit).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(Line::Eof);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        return Ok(Line::Text);
    }
    if buf.len() <= MAX_LINE {
        return Ok(Line::Text); // last line without newline
    }
    // Skip the rest of the over-long line.
    loop {
        let avail = r.fill_buf()?;
        if avail.is_empty() {
            break;
        }
        if let Some(i) = avail.iter().position(|&b| b == b'\n') {
            r.consume(i + 1);
            break;
        }
        let len = avail.len();
        r.consume(len);
    }
    Ok(Line::TooLong)
}

/// Pushes `balloon-target` events to one subscribed connection.
#[derive(Debug)]
struct Forwarder {
    /// Forwards `balloon-target` events (one per connection).
    balloon: bool,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Forwarder {
    /// Forwards what `rx` yields, as events made by `convert`, after `first`.
    fn spawn<T: Send + 'static>(
        rx: Receiver<T>,
        first: Option<Event>,
        convert: fn(T) -> Event,
        writer: Writer,
        shared: Arc<Shared>,
    ) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let my_stop = Arc::clone(&stop);
        let thread = crate::thread::spawn("dmm-control-events", move || {
            let mut pending = first;
            loop {
                if let Some(ev) = pending.take() {
                    if write_line(&writer, &encode_event(&ev)).is_err() {
                        return;
                    }
                }
                if my_stop.load(Ordering::SeqCst) || shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                match rx.recv_timeout(FORWARD_POLL) {
                    Ok(t) => pending = Some(convert(t)),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        })?;
        Ok(Forwarder {
            balloon: false,
            stop,
            thread,
        })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        join(self.thread);
    }
}

fn serve_connection(stream: UnixStream, vm: &Weak<Vm>, shared: &Arc<Shared>) {
    let writer: Writer = match stream.try_clone() {
        Ok(w) => Arc::new(Mutex::new(w)),
        Err(e) => {
            log::warn!("control socket: {e}");
            return;
        }
    };
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    let mut forwarders: Vec<Forwarder> = Vec::new();
    loop {
        let answer = match read_line(&mut reader, &mut buf) {
            Ok(Line::Eof) | Err(_) => break,
            Ok(Line::TooLong) => Err(ErrorBody::new(
                ErrorCode::Malformed,
                format!("request line longer than {MAX_LINE} bytes"),
            )),
            Ok(Line::Text) => match std::str::from_utf8(&buf) {
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => Request::parse(text.trim()).and_then(|req| execute(vm, req)),
                Err(e) => Err(ErrorBody::new(
                    ErrorCode::Malformed,
                    format!("request is not UTF-8: {e}"),
                )),
            },
        };
        let (line, subscription) = match answer {
            Ok(Outcome::Answer(line)) => (line, None),
            Ok(Outcome::Subscribed(first, rx)) => (
                encode_ok(&NumPages { num_pages: first }),
                Some(Subscription::Balloon(first, rx)),
            ),
            Ok(Outcome::Events(rx)) => (encode_ok(&Empty {}), Some(Subscription::Vm(rx))),
            Err(e) => (encode_err(&e), None),
        };
        if write_line(&writer, &line).is_err() {
            break;
        }
        let spawned = match subscription {
            None => continue,
            Some(Subscription::Balloon(first, rx)) => {
                // A new balloon subscription replaces the old one.
                if let Some(pos) = forwarders.iter().position(|f| f.balloon) {
                    forwarders.swap_remove(pos).stop();
                }
                let first = Event::BalloonTarget(NumPages { num_pages: first });
                Forwarder::spawn(
                    rx,
                    Some(first),
                    balloon_event,
                    Arc::clone(&writer),
                    Arc::clone(shared),
                )
                .map(|mut f| {
                    f.balloon = true;
                    f
                })
            }
            Some(Subscription::Vm(rx)) => {
                Forwarder::spawn(rx, None, vm_event, Arc::clone(&writer), Arc::clone(shared))
            }
        };
        match spawned {
            Ok(f) => forwarders.push(f),
            Err(e) => log::warn!("control socket: cannot start event thread: {e}"),
        }
    }
    for f in forwarders {
        f.stop();
    }
}

/// A subscription a request opened.
enum Subscription {
    Balloon(u64, Receiver<BalloonPush>),
    Vm(Receiver<VmEvent>),
}

fn balloon_event(p: BalloonPush) -> Event {
    match p {
        BalloonPush::Target(t) => Event::BalloonTarget(NumPages {
            num_pages: u64::from(t.num_pages),
        }),
        BalloonPush::FreePageHint { round } => Event::FreePageHint(HintRound { round, pages: 0 }),
    }
}

fn vm_event(ev: VmEvent) -> Event {
    match ev {
        VmEvent::MemoryError {
            gpa,
            len,
            reason,
            action,
            thread_id,
        } => Event::MemoryError(MemoryErrorBody {
            gpa,
            len,
            reason,
            action,
            thread_id,
        }),
        VmEvent::ReclaimBehind {
            excess_bytes,
            pool_size,
            waited_ms,
        } => Event::ReclaimBehind(Behind {
            excess_bytes,
            pool_size,
            waited_ms,
        }),
        VmEvent::PoolSizeChanged {
            pool_size,
            previous_pool_size,
            resident_bytes,
        } => Event::PoolSizeChanged(PoolChanged {
            pool_size,
            previous_pool_size,
            resident_bytes,
        }),
        VmEvent::PoolReached {
            pool_size,
            resident_bytes,
            took_ms,
        } => Event::PoolReached(PoolReached {
            pool_size,
            resident_bytes,
            took_ms,
        }),
    }
}

/// What a request produced.
enum Outcome {
    /// The answer line.
    Answer(String),
    /// `subscribe-balloon`: the current target and the event stream.
    Subscribed(u64, Receiver<BalloonPush>),
    /// `subscribe-events`: the VM's event stream.
    Events(Receiver<VmEvent>),
}

fn invalid(msg: String) -> ErrorBody {
    ErrorBody::new(ErrorCode::InvalidArgument, msg)
}

fn balloon_pages(vm: &Vm, num_pages: u64) -> Result<u32, ErrorBody> {
    let size = vm.stats().size;
    match u32::try_from(num_pages) {
        Ok(n) if num_pages.saturating_mul(BALLOON_PAGE) <= size => Ok(n),
        _ => Err(invalid(format!(
            "num_pages {num_pages} is larger than the guest RAM ({} pages of 4 KiB)",
            size / BALLOON_PAGE
        ))),
    }
}

/// Runs one request on the VM. Validation happens before any change.
fn execute(vm: &Weak<Vm>, req: Request) -> Result<Outcome, ErrorBody> {
    let vm = vm
        .upgrade()
        .ok_or_else(|| ErrorBody::new(ErrorCode::State, "the VM is shut down"))?;
    let line = match req {
        Request::Stats => encode_ok(&StatsAnswer::of(&vm)),
        Request::SetPool(a) => {
            let s = vm.stats();
            if a.bytes > s.size {
                return Err(invalid(format!(
                    "pool size {} is larger than the guest RAM size {}",
                    a.bytes, s.size
                )));
            }
            if a.bytes % s.page_size.max(1) != 0 {
                return Err(invalid(format!(
                    "pool size {} is not a multiple of the page size {}",
                    a.bytes, s.page_size
                )));
            }
            vm.set_pool_size(a.bytes)?;
            encode_ok(&PoolAnswer { pool_size: a.bytes })
        }
        Request::PageStates(a) => {
            if a.count > MAX_PAGE_STATES {
                return Err(invalid(format!(
                    "count {} is larger than {MAX_PAGE_STATES}",
                    a.count
                )));
            }
            let s = vm.stats();
            let pages = s.size / s.page_size.max(1);
            if a.first_pfn
                .checked_add(a.count)
                .map_or(true, |end| end > pages)
            {
                return Err(invalid(format!(
                    "pages {}+{} are outside guest RAM ({pages} pages)",
                    a.first_pfn, a.count
                )));
            }
            let states = vm.page_states(a.first_pfn, a.count)?;
            encode_ok(&StatesAnswer {
                states: states.iter().map(|s| s.letter()).collect(),
            })
        }
        Request::Release(a) => encode_ok(&vm.release(&guest_ranges(&a.ranges), a.reason)?),
        Request::ReclaimBack(a) => encode_ok(&vm.reclaim_back(&guest_ranges(&a.ranges))?),
        Request::SetBalloonTarget(a) => {
            vm.set_balloon_target(balloon_pages(&vm, a.num_pages)?)?;
            encode_ok(&a)
        }
        Request::BalloonActual(a) => {
            vm.set_balloon_actual(balloon_pages(&vm, a.num_pages)?);
            encode_ok(&Empty {})
        }
        Request::GuestStats(a) => {
            vm.set_guest_stats(GuestStats { values: a.values });
            encode_ok(&Empty {})
        }
        Request::HintDone(a) => {
            vm.hint_done(a.round, a.pages);
            encode_ok(&Empty {})
        }
        Request::Pin(a) => encode_ok(&vm.pin(&guest_ranges(&a.ranges))),
        Request::Unpin(a) => encode_ok(&vm.unpin(&guest_ranges(&a.ranges))),
        Request::SetSwapSize(a) => {
            vm.set_swap_size(a.bytes)?;
            encode_ok(&Empty {})
        }
        Request::SetBalloonDeadline(a) => {
            vm.set_balloon_deadline(Duration::from_millis(a.ms));
            encode_ok(&a)
        }
        Request::SubscribeEvents => {
            return Ok(Outcome::Events(vm.subscribe_events()));
        }
        Request::PageInfo(a) => encode_ok(&PageAnswer {
            page: vm.page_info(a.gpa)?,
        }),
        Request::InjectSwapReadError(a) => encode_ok(&PageAnswer {
            page: vm.inject_swap_read_error(a.gpa)?,
        }),
        Request::SubscribeBalloon => {
            let rx = vm.subscribe_balloon();
            // The receiver yields the current target at once.
            let first = match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(BalloonPush::Target(t)) => u64::from(t.num_pages),
                Ok(BalloonPush::FreePageHint { .. }) | Err(_) => vm.stats().balloon_target_pages,
            };
            return Ok(Outcome::Subscribed(first, rx));
        }
    };
    Ok(Outcome::Answer(line))
}
