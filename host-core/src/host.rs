//! What the host gives every instance: its state, the host services, the messaging hook and
//! WASI without ambient authority.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::courier::actor::{host_services, messaging, types};
use crate::guest_log::GuestLog;
use crate::timers::Timers;
use crate::trace::TraceContext;
use crate::{ComponentId, LogLevel, MessagingError};

/// A boxed future, as returned by [`Messaging::send_request`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a [`Messaging::start_send_message`] went: done at once (queued or refused), or
/// waiting for the target to accept it (a durable component accepts a message once it is
/// stored), with the answer to await.
pub enum Sending {
    /// Queued or refused already.
    Done(Result<(), MessagingError>),
    /// The answer comes when the future resolves; the guest's call waits for it.
    Waiting(BoxFuture<'static, Result<(), MessagingError>>),
}

/// The routing behind a guest's `messaging` imports.
///
/// host-core defines it and the broker implements it; host-core's own default,
/// [`NoMessaging`], refuses every call. `sender` is always the calling instance's id as the
/// host knows it: a guest cannot choose it. `trace` is the context of the handler call the
/// guest is in, if that call is traced ([`Instance::set_trace`](crate::Instance::set_trace)):
/// what the guest sends carries it, so its receiver's span is that call's child.
pub trait Messaging: Send + Sync + 'static {
    /// Queue `message` for `target` without waiting for it to be handled.
    fn send_message(
        &self,
        sender: &ComponentId,
        target: &str,
        message: Vec<u8>,
        trace: Option<TraceContext>,
    ) -> Result<(), MessagingError>;

    /// What a guest's `send-message` calls: [`send_message`](Self::send_message), unless the
    /// target accepts a message only after something the caller must wait for (a durable
    /// component stores it first), in which case the call waits for the answer. The default
    /// never waits.
    fn start_send_message(
        &self,
        sender: &ComponentId,
        target: &str,
        message: Vec<u8>,
        trace: Option<TraceContext>,
    ) -> Sending {
        Sending::Done(self.send_message(sender, target, message, trace))
    }

    /// Deliver `request` to `target`'s `handle-request` and wait at most `timeout` for the reply.
    fn send_request(
        &self,
        sender: &ComponentId,
        target: &str,
        request: Vec<u8>,
        timeout: Duration,
        trace: Option<TraceContext>,
    ) -> BoxFuture<'static, Result<Vec<u8>, MessagingError>>;

    /// Deliver `message` to every subscriber of `topic` and return how many it reached.
    fn publish(
        &self,
        sender: &ComponentId,
        topic: &str,
        message: Vec<u8>,
        trace: Option<TraceContext>,
    ) -> Result<u32, MessagingError>;
}

/// The messaging of an instance that runs outside a broker: there is nobody to reach, so
/// every call fails with `target-not-found` naming what the guest asked for.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoMessaging;

impl Messaging for NoMessaging {
    fn send_message(
        &self,
        _: &ComponentId,
        target: &str,
        _: Vec<u8>,
        _: Option<TraceContext>,
    ) -> Result<(), MessagingError> {
        Err(MessagingError::TargetNotFound(target.to_string()))
    }

    fn send_request(
        &self,
        _: &ComponentId,
        target: &str,
        _: Vec<u8>,
        _: Duration,
        _: Option<TraceContext>,
    ) -> BoxFuture<'static, Result<Vec<u8>, MessagingError>> {
        let err = MessagingError::TargetNotFound(target.to_string());
        Box::pin(async move { Err(err) })
    }

    fn publish(
        &self,
        _: &ComponentId,
        topic: &str,
        _: Vec<u8>,
        _: Option<TraceContext>,
    ) -> Result<u32, MessagingError> {
        Err(MessagingError::TargetNotFound(topic.to_string()))
    }
}

/// What an embedder's host interfaces share, by type; see
/// [`InstanceOptions::extension`](crate::InstanceOptions::extension).
#[derive(Clone, Default)]
pub(crate) struct Extensions(Vec<Arc<dyn Any + Send + Sync>>);

impl Extensions {
    pub(crate) fn insert<T: Any + Send + Sync>(&mut self, value: Arc<T>) {
        self.0.retain(|held| !held.is::<T>());
        self.0.push(value);
    }

    fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.0.iter().find_map(|held| held.downcast_ref::<T>())
    }
}

/// The store data of one instance: what a host function sees of the instance calling it.
///
/// Host interfaces an embedder links through [`EngineBuilder::link`](crate::EngineBuilder::link)
/// read the caller's id here (the host's word, never the guest's) and the values its
/// [`InstanceOptions`](crate::InstanceOptions) carry for them.
pub struct HostState {
    pub(crate) id: ComponentId,
    extensions: Extensions,
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    /// Where its `log` calls and output lines go, at a bounded rate.
    pub(crate) log: GuestLog,
    /// The context of the handler call in progress, if it is traced.
    pub(crate) trace: Option<TraceContext>,
    messaging: Arc<dyn Messaging>,
    pub(crate) timers: Arc<dyn Timers>,
    pub(crate) stderr: GuestOutput,
    /// When the call in progress must end; host calls that wait are cut short by it too.
    pub(crate) call_deadline: Option<Instant>,
    /// Epoch ticks the current call has left, spent by running wasm and by waiting in host
    /// calls.
    pub(crate) ticks_left: u64,
    /// The engine's tick count when the guest last called into the host.
    pub(crate) entered_host_at: u64,
    pub(crate) deadline_hit: bool,
}

impl HostState {
    pub(crate) fn new(
        id: ComponentId,
        memory_limit: usize,
        messaging: Arc<dyn Messaging>,
        timers: Arc<dyn Timers>,
        extensions: Extensions,
    ) -> Self {
        let log = GuestLog::new(id.clone());
        let stdout = GuestOutput::new(log.clone(), Stream::Stdout);
        let stderr = GuestOutput::new(log.clone(), Stream::Stderr);
        // No preopened directories, no environment, no arguments, no network: a guest gets
        // only what the host grants it, and this host grants nothing ambient.
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout)
            .stderr(stderr.clone())
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false)
            .build();
        HostState {
            id,
            extensions,
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(memory_limit),
            messaging,
            timers,
            log,
            trace: None,
            stderr,
            call_deadline: None,
            ticks_left: 0,
            entered_host_at: 0,
            deadline_hit: false,
        }
    }

    /// The id of the instance, as the host gave it.
    pub fn id(&self) -> &ComponentId {
        &self.id
    }

    /// The value of type `T` the instance's options carry, if they carry one.
    pub fn extension<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.extensions.get::<T>()
    }

    /// The context of the handler call in progress, if it is traced: what an embedder's
    /// host function does on the guest's behalf can carry it on.
    pub fn trace(&self) -> Option<TraceContext> {
        self.trace
    }

    /// Time left in the current call, if it has a deadline.
    fn remaining(&self) -> Option<Duration> {
        self.call_deadline
            .map(|deadline| deadline.saturating_duration_since(Instant::now()))
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for HostState {}

impl messaging::Host for HostState {
    fn self_id(&mut self) -> String {
        self.id.to_string()
    }

    async fn send_message(
        &mut self,
        target: String,
        message: Vec<u8>,
    ) -> Result<(), MessagingError> {
        // Parked time counts against the call's deadline like any host call's (the call hook
        // times it), so a slow store cannot hold a guest past its deadline unnoticed.
        match self
            .messaging
            .start_send_message(&self.id, &target, message, self.trace)
        {
            Sending::Done(answer) => answer,
            Sending::Waiting(answer) => answer.await,
        }
    }

    async fn send_request(
        &mut self,
        target: String,
        request: Vec<u8>,
        timeout_ms: u32,
    ) -> Result<Vec<u8>, MessagingError> {
        // A request may not outlive the call that makes it: epoch interruption cannot stop a
        // guest that is parked in a host call, so the wait itself is bounded by the deadline.
        let mut timeout = Duration::from_millis(u64::from(timeout_ms));
        if let Some(remaining) = self.remaining() {
            timeout = timeout.min(remaining);
        }
        self.messaging
            .send_request(&self.id, &target, request, timeout, self.trace)
            .await
    }

    fn publish(&mut self, topic: String, message: Vec<u8>) -> Result<u32, MessagingError> {
        self.messaging
            .publish(&self.id, &topic, message, self.trace)
    }
}

impl host_services::Host for HostState {
    fn current_time_millis(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn log(&mut self, level: LogLevel, message: String) {
        self.log.line(level, None, &message);
    }
}

/// Add WASI and the Courier interfaces to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    crate::bindings::Actor::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    Ok(())
}

/// Enforces the per-instance memory cap, on all of the instance's linear memories together.
///
/// wasmtime asks the limiter about each memory on its own (its creation, with `current` 0,
/// and every growth), so the limiter keeps the sum: a component with several memories gets
/// one cap, not one per memory.
///
/// Refusing a growth with an error (rather than `Ok(false)`) traps the guest at the very
/// `memory.grow` that crossed the cap, so the error says what happened instead of surfacing
/// later as an allocator abort.
pub(crate) struct MemoryLimiter {
    pub(crate) limit: usize,
    /// Bytes of every memory of the instance together.
    total: usize,
    /// The growth last allowed, taken back if the allocator then failed it.
    pending: usize,
}

/// The marker error of a growth refused by [`MemoryLimiter`].
#[derive(Debug)]
pub(crate) struct MemoryCapExceeded;

impl std::fmt::Display for MemoryCapExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("memory limit exceeded")
    }
}

impl std::error::Error for MemoryCapExceeded {}

impl MemoryLimiter {
    fn new(limit: usize) -> Self {
        MemoryLimiter {
            limit,
            total: 0,
            pending: 0,
        }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current);
        if self.total.saturating_add(growth) > self.limit {
            return Err(wasmtime::Error::new(MemoryCapExceeded));
        }
        self.total += growth;
        self.pending = growth;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.total -= std::mem::take(&mut self.pending);
        // Below the cap but the allocator (the pool's slot size, or the OS) said no: to the
        // guest this is the same wall, and it should hear about it the same way.
        tracing::debug!(%error, "memory growth failed below the cap");
        Err(wasmtime::Error::new(MemoryCapExceeded))
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a million is far beyond any real guest.
        Ok(desired <= 1_000_000)
    }
}

#[derive(Clone, Copy, Debug)]
enum Stream {
    Stdout,
    Stderr,
}

/// A guest's stdout or stderr: each complete line goes to `tracing` under the component's
/// id, and stderr keeps the text written during the current call, where a panicking Rust
/// guest leaves its panic message.
#[derive(Clone)]
pub(crate) struct GuestOutput {
    inner: Arc<Mutex<OutputBuffer>>,
}

struct OutputBuffer {
    log: GuestLog,
    stream: Stream,
    line: Vec<u8>,
    /// Text of the current call, kept only for stderr and bounded by [`CALL_TEXT_LIMIT`].
    call_text: Vec<u8>,
}

/// Enough for a panic message and its location; a guest that prints more only loses the
/// excess from the error, not from the log.
const CALL_TEXT_LIMIT: usize = 16 * 1024;
/// A line of guest output longer than this is logged in pieces rather than held without
/// bound.
use crate::guest_log::LINE_LIMIT;

impl GuestOutput {
    fn new(log: GuestLog, stream: Stream) -> Self {
        GuestOutput {
            inner: Arc::new(Mutex::new(OutputBuffer {
                log,
                stream,
                line: Vec::new(),
                call_text: Vec::new(),
            })),
        }
    }

    fn write(&self, bytes: &[u8]) {
        let mut buf = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(buf.stream, Stream::Stderr) {
            let room = CALL_TEXT_LIMIT.saturating_sub(buf.call_text.len());
            buf.call_text
                .extend_from_slice(&bytes[..bytes.len().min(room)]);
        }
        for &byte in bytes {
            if byte == b'\n' {
                buf.emit_line();
            } else {
                buf.line.push(byte);
                if buf.line.len() >= LINE_LIMIT {
                    buf.emit_line();
                }
            }
        }
    }

    /// Forget the text of the previous call.
    pub(crate) fn begin_call(&self) {
        let mut buf = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        buf.call_text.clear();
    }

    /// The text written during the current call, including a line not yet ended.
    pub(crate) fn call_text(&self) -> String {
        let mut buf = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // A panicking guest may trap before its last line ends; log that line now.
        if !buf.line.is_empty() {
            buf.emit_line();
        }
        String::from_utf8_lossy(&buf.call_text).into_owned()
    }
}

impl OutputBuffer {
    fn emit_line(&mut self) {
        let line = String::from_utf8_lossy(&self.line);
        match self.stream {
            Stream::Stdout => self.log.line(LogLevel::Info, Some("stdout"), &line),
            Stream::Stderr => self.log.line(LogLevel::Warn, Some("stderr"), &line),
        }
        self.line.clear();
    }
}

impl wasmtime_wasi::cli::IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl wasmtime_wasi::p2::OutputStream for GuestOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> wasmtime_wasi::p2::StreamResult<()> {
        GuestOutput::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> wasmtime_wasi::p2::StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> wasmtime_wasi::p2::StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        GuestOutput::write(&self, buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use wasmtime::ResourceLimiter;

    use super::MemoryLimiter;

    const MIB: usize = 1 << 20;

    #[test]
    fn the_memory_cap_holds_for_all_of_an_instances_memories_together() {
        let mut limiter = MemoryLimiter::new(16 * MIB);
        // Two memories created at 6 MiB each, then each grown by 2 MiB: 16 MiB in all.
        assert!(limiter.memory_growing(0, 6 * MIB, None).unwrap());
        assert!(limiter.memory_growing(0, 6 * MIB, None).unwrap());
        assert!(limiter.memory_growing(6 * MIB, 8 * MIB, None).unwrap());
        assert!(limiter.memory_growing(6 * MIB, 8 * MIB, None).unwrap());
        // Either growing further would pass the cap, though each alone is far below it.
        assert!(limiter.memory_growing(8 * MIB, 9 * MIB, None).is_err());
        assert!(
            limiter.memory_growing(0, MIB, None).is_err(),
            "nor may a third appear"
        );
    }

    #[test]
    fn a_growth_the_allocator_failed_is_not_counted() {
        let mut limiter = MemoryLimiter::new(16 * MIB);
        assert!(limiter.memory_growing(0, 10 * MIB, None).unwrap());
        let _ = limiter.memory_grow_failed(wasmtime::Error::msg("no room"));
        assert!(limiter.memory_growing(0, 16 * MIB, None).unwrap());
    }
}
