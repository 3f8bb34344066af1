//! Clients: [`LocalClient`] for code already on a tokio-uring thread, and [`Client`], a `Send`
//! handle that runs its connections on threads of its own.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use remora_core::{CallError, Command, Config, Handler, NotSupported};
use remora_driver::client::{AsyncClient, Dial, PoolSettings};
use tokio::sync::{oneshot, Notify};
use tokio_uring::net::TcpStream;

use remora_tls::{ClientTls, Secure};

use crate::conn::{Clock, Conn};

remora_driver::async_client_config! {
    /// How a client behaves.
    pub struct ClientConfig {
        /// I/O threads of a [`Client`] (each with its own ring and its own connections).
        pub threads: usize = 1,
    }
}

/// How a [`LocalClient`]'s connections are made: its settings, handler and TLS.
pub struct Uring {
    secure: Secure,
    config: Config,
    idle_timeout: Option<Duration>,
    handler: Arc<dyn Handler>,
    clock: Clock,
}

impl Dial for Uring {
    type Config = ClientConfig;
    type Stream = TcpStream;
    type Conn = Conn;
    type Shared<T> = Rc<T>;

    fn share<T>(value: T) -> Rc<T> {
        Rc::new(value)
    }
    fn new(config: &ClientConfig, handler: Arc<dyn Handler>, secure: Secure) -> Uring {
        let (idle_timeout, clock) = (config.idle_timeout, Clock::new());
        let config = config.connection;
        Uring {
            secure,
            config,
            idle_timeout,
            handler,
            clock,
        }
    }
    fn pool(config: &ClientConfig) -> PoolSettings {
        config.pool_settings()
    }
    fn connect(addr: SocketAddr) -> impl Future<Output = io::Result<TcpStream>> {
        TcpStream::connect(addr)
    }
    fn start(&self, stream: TcpStream) -> Result<Rc<Conn>, CallError> {
        let (config, idle, clock) = (self.config, self.idle_timeout, self.clock);
        let handler = Arc::clone(&self.handler);
        Ok(Conn::start(
            stream,
            &self.secure,
            config,
            idle,
            handler,
            clock,
        ))
    }
}

/// A client for code running on a tokio-uring thread: not `Send`, no locks, no cross-thread
/// hops. Clone it freely within the thread.
///
/// ```no_run
/// use std::time::Duration;
/// use remora_core::{codes, Command};
/// use remora_uring::{ClientConfig, LocalClient};
///
/// tokio_uring::start(async {
///     let client = LocalClient::connect("127.0.0.1:9876", ClientConfig::default()).await?;
///     let request = Command::request(codes::GET_ROUTEINFO_BY_TOPIC).with_ext("topic", "T");
///     let response = client.call(request, Duration::from_secs(3)).await?;
///     println!("{}", response.code);
///     client.close();
///     Ok::<(), remora_core::CallError>(())
/// })
/// # .unwrap();
/// ```
pub type LocalClient = AsyncClient<Uring>;

enum Job {
    Call {
        request: Command,
        timeout: Duration,
        reply: oneshot::Sender<Result<Command, CallError>>,
    },
    Oneway {
        request: Command,
        reply: oneshot::Sender<Result<(), CallError>>,
    },
}

struct Worker {
    jobs: tokio::sync::mpsc::UnboundedSender<Job>,
    thread: Option<JoinHandle<()>>,
    stop: Arc<Notify>,
}

/// A `Send + Sync` client whose connections live on io_uring threads of its own
/// ([`ClientConfig::threads`]). Calls from any thread or runtime are handed to those threads;
/// await the returned future anywhere, or use [`Client::call_blocking`].
#[derive(Clone)]
pub struct Client {
    workers: Arc<std::sync::Mutex<Vec<Worker>>>,
    next: Arc<AtomicUsize>,
}

impl Client {
    /// Starts the client's threads and connects each to `addr`.
    pub fn connect(addr: impl ToSocketAddrs, config: ClientConfig) -> Result<Client, CallError> {
        Client::connect_with_handler(addr, config, Arc::new(NotSupported))
    }

    /// Like [`Client::connect`]; requests from the server go to `handler`.
    pub fn connect_with_handler(
        addr: impl ToSocketAddrs,
        config: ClientConfig,
        handler: Arc<dyn Handler>,
    ) -> Result<Client, CallError> {
        Client::start(addr, config, handler, Secure::plain())
    }

    /// Starts the client's threads and connects each to `addr` (`host:port`) over TLS (see
    /// [`LocalClient::connect_tls`]).
    pub fn connect_tls(
        addr: &str,
        config: ClientConfig,
        tls: ClientTls,
    ) -> Result<Client, CallError> {
        let secure = remora_driver::client_tls(addr, tls, config.connect_timeout)?;
        Client::start(addr, config, Arc::new(NotSupported), secure)
    }

    fn start(
        addr: impl ToSocketAddrs,
        config: ClientConfig,
        handler: Arc<dyn Handler>,
        secure: Secure,
    ) -> Result<Client, CallError> {
        let addrs = remora_driver::resolve(addr)?;
        let mut workers = Vec::new();
        for i in 0..config.threads.max(1) {
            let (jobs, mut queue) = tokio::sync::mpsc::unbounded_channel::<Job>();
            let (ready_tx, ready_rx) = mpsc::channel();
            let stop = Arc::new(Notify::new());
            let stop_here = Arc::clone(&stop);
            let addrs = addrs.clone();
            let handler = Arc::clone(&handler);
            let secure = secure.clone();
            let thread = std::thread::Builder::new()
                .name(format!("remora-uring-client-{i}"))
                .spawn(move || {
                    tokio_uring::start(async move {
                        let connected =
                            LocalClient::connect_secure(&addrs[..], config, handler, secure);
                        let client = match connected.await {
                            Ok(c) => {
                                let _ = ready_tx.send(Ok(()));
                                c
                            }
                            Err(e) => {
                                let _ = ready_tx.send(Err(e));
                                return;
                            }
                        };
                        let running = Rc::new(std::cell::Cell::new(0usize));
                        loop {
                            let job = tokio::select! {
                                job = queue.recv() => job,
                                _ = stop_here.notified() => None,
                            };
                            let Some(job) = job else { break };
                            let client = client.clone();
                            let running = Rc::clone(&running);
                            running.set(running.get() + 1);
                            tokio_uring::spawn(async move {
                                match job {
                                    Job::Call {
                                        request,
                                        timeout,
                                        reply,
                                    } => {
                                        let _ = reply.send(client.call(request, timeout).await);
                                    }
                                    Job::Oneway { request, reply } => {
                                        let _ = reply.send(client.oneway(request).await);
                                    }
                                }
                                running.set(running.get() - 1);
                            });
                        }
                        client.close();
                        // Let the tasks holding the calls that close() failed deliver them.
                        for _ in 0..1000 {
                            if running.get() == 0 {
                                break;
                            }
                            tokio::task::yield_now().await;
                        }
                    });
                })
                .map_err(|e| CallError::Connect(e.into()))?;
            let worker = Worker {
                jobs,
                thread: Some(thread),
                stop,
            };
            match ready_rx.recv() {
                Ok(Ok(())) => workers.push(worker),
                Ok(Err(e)) => {
                    worker_join(worker);
                    Client::shut(&mut workers);
                    return Err(e);
                }
                Err(_) => {
                    Client::shut(&mut workers);
                    return Err(CallError::Closed { written: false });
                }
            }
        }
        Ok(Client {
            workers: Arc::new(std::sync::Mutex::new(workers)),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    fn submit(&self, job: Job) -> bool {
        let workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        if workers.is_empty() {
            return false;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % workers.len();
        workers[i].jobs.send(job).is_ok()
    }

    /// Sends `request` and resolves with its response (or why there is none). The future is
    /// `Send` and runtime-agnostic.
    pub fn call(
        &self,
        request: Command,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<Command, CallError>> + Send + 'static {
        let (reply, outcome) = oneshot::channel();
        let submitted = self.submit(Job::Call {
            request,
            timeout,
            reply,
        });
        answer(submitted, outcome)
    }

    /// [`Client::call`] for threads outside any async runtime.
    pub fn call_blocking(&self, request: Command, timeout: Duration) -> Result<Command, CallError> {
        let (reply, outcome) = oneshot::channel();
        if !self.submit(Job::Call {
            request,
            timeout,
            reply,
        }) {
            return Err(CallError::Closed { written: false });
        }
        outcome
            .blocking_recv()
            .unwrap_or(Err(CallError::Closed { written: true }))
    }

    /// Sends a oneway request; resolves once it is queued on a connection.
    pub fn oneway(
        &self,
        request: Command,
    ) -> impl std::future::Future<Output = Result<(), CallError>> + Send + 'static {
        let (reply, outcome) = oneshot::channel();
        let submitted = self.submit(Job::Oneway { request, reply });
        answer(submitted, outcome)
    }

    /// Closes every connection and joins the client's threads (idempotent). Calls in flight
    /// fail with `Closed`.
    pub fn close(&self) {
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        Client::shut(&mut workers);
    }

    fn shut(workers: &mut Vec<Worker>) {
        for w in workers.drain(..) {
            worker_join(w);
        }
    }
}

/// A submitted job's answer: `Closed` unwritten if it was never handed to a thread.
async fn answer<T>(
    submitted: bool,
    outcome: oneshot::Receiver<Result<T, CallError>>,
) -> Result<T, CallError> {
    if !submitted {
        return Err(CallError::Closed { written: false });
    }
    // A reply dropped unanswered: the client shut down mid-call; assume the worst.
    outcome
        .await
        .unwrap_or(Err(CallError::Closed { written: true }))
}

fn worker_join(mut w: Worker) {
    w.stop.notify_one();
    if let Some(t) = w.thread.take() {
        let _ = t.join();
    }
}

/// `REMORA_POOL_SIZE` sets a cluster's connections per endpoint.
impl remora_core::resilience::cluster::ClientSettings for ClientConfig {
    fn set_pool_size(&mut self, n: usize) {
        self.pool_size = n.max(1);
    }
}
