//! The client: a pool of multiplexed connections to one endpoint, usable from any task.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use remora_core::{CallError, Handler};
use remora_driver::client::{AsyncClient, Dial, PoolSettings};
use remora_tls::Secure;
use tokio::net::TcpStream;

use crate::conn::{Clock, Conn, ConnConfig, Dispatch};

remora_driver::async_client_config! {
    /// How a [`Client`] behaves.
    pub struct ClientConfig {
        /// Where requests the server sends to this client are answered.
        pub dispatch: Dispatch = Dispatch::Inline,
    }
}

/// How this driver's connections are made: its settings, handler and TLS.
pub struct Tokio {
    secure: Secure,
    config: ConnConfig,
    handler: Arc<dyn Handler>,
    clock: Clock,
}

impl Dial for Tokio {
    type Config = ClientConfig;
    type Stream = TcpStream;
    type Conn = Conn;
    type Shared<T> = Arc<T>;

    fn share<T>(value: T) -> Arc<T> {
        Arc::new(value)
    }
    fn new(config: &ClientConfig, handler: Arc<dyn Handler>, secure: Secure) -> Tokio {
        let config = ConnConfig {
            machine: config.connection,
            idle_timeout: config.idle_timeout,
            dispatch: config.dispatch,
        };
        let clock = Clock::new();
        Tokio {
            secure,
            config,
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
    fn start(&self, stream: TcpStream) -> Result<Arc<Conn>, CallError> {
        let handler = Arc::clone(&self.handler);
        Conn::start(stream, &self.secure, self.config, handler, self.clock, None)
            .map_err(|e| CallError::Connect(e.into()))
    }
}

/// A remoting client on tokio: `Send + Sync + Clone`, so any number of tasks on any threads may
/// [`call`](Client::call) at once over the same multiplexed connections (each response goes to
/// its own caller). Requests the server sends to the client are answered by a [`Handler`].
///
/// Connections are tasks on the runtime that opened them (the one a call that needed a new
/// connection ran on); calls may be awaited anywhere.
///
/// ```no_run
/// use std::time::Duration;
/// use remora_core::{codes, Command};
/// use remora_tokio::{Client, ClientConfig};
///
/// # async fn run() -> Result<(), remora_core::CallError> {
/// let client = Client::connect("127.0.0.1:9876", ClientConfig::default()).await?;
/// let request = Command::request(codes::GET_ROUTEINFO_BY_TOPIC).with_ext("topic", "TopicTest");
/// let response = client.call(request, Duration::from_secs(3)).await?;
/// println!("{} {:?}", response.code, response.remark());
/// client.close();
/// # Ok(())
/// # }
/// ```
pub type Client = AsyncClient<Tokio>;

impl remora_core::resilience::cluster::ClientSettings for ClientConfig {
    fn set_pool_size(&mut self, connections: usize) {
        self.pool_size = connections;
    }
}
