//! Following a topic's brokers: the name server's route data and cluster info, and the decisions
//! of a resolver that keeps a topic's route up to date.
//!
//! - [`TopicRoute::parse`] reads the body of a `GET_ROUTEINFO_BY_TOPIC` (105) response and
//!   [`ClusterInfo::parse`] that of `GET_BROKER_CLUSTER_INFO` (106). Both accept standard JSON, as
//!   the Rust name server and Java ≥ 4.9.4 write it, and the form older Java name servers write
//!   with fastjson, whose numeric map keys are unquoted (`"brokerAddrs":{0:"10.0.0.1:10911"}`).
//!   Bad input is a [`RouteError`], never a panic; nesting depth and sizes are bounded.
//! - [`RouteTracker`] is the resolver as a state machine: which name server to ask next (rotating
//!   on failure), when to ask again, and what changed between two routes. It reads no clock and
//!   does no I/O: the driver passes `now`, sends the request it is handed, and reports the answer
//!   or the failure.
//!
//! A broker's master is the address with broker id 0; whether a broker takes writes comes from
//! its queue data's permission bits ([`PERM_WRITE`]).
//!
//! ```
//! use remora_core::route::TopicRoute;
//!
//! // An older Java name server: fastjson leaves the numeric key unquoted.
//! let body = br#"{"brokerDatas":[{"brokerAddrs":{0:"10.0.0.1:10911",1:"10.0.0.2:10911"},
//!     "brokerName":"broker-a","cluster":"DefaultCluster"}],
//!     "queueDatas":[{"brokerName":"broker-a","perm":6,"readQueueNums":4,"writeQueueNums":4}]}"#;
//! let route = TopicRoute::parse(body).unwrap();
//! let broker = route.choose_writable(None).unwrap();
//! assert_eq!((broker.name.as_str(), broker.master.as_deref()), ("broker-a", Some("10.0.0.1:10911")));
//! ```

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use crate::codes;
use crate::Command;
use crate::Instant;

/// Queue permission bit: the broker's queues of this topic may be read.
pub const PERM_READ: u32 = 1 << 2;
/// Queue permission bit: messages may be written (sent) to the broker's queues of this topic.
pub const PERM_WRITE: u32 = 1 << 1;
/// Queue permission bit: the topic's permissions are inherited.
pub const PERM_INHERIT: u32 = 1;

/// The broker id of a master.
pub const MASTER_ID: u64 = 0;

/// Deepest nesting of objects and arrays accepted in a route body.
pub const MAX_DEPTH: usize = 32;
/// Largest route body accepted, in bytes (the frame limit bounds it too).
pub const MAX_BODY_LEN: usize = 16 * 1024 * 1024;

/// Why a route or cluster-info body was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouteError {
    /// Not JSON (nor fastjson's unquoted-key form): what was wrong, at which byte.
    Syntax {
        /// Byte offset in the body.
        at: usize,
        /// What the parser expected or found.
        what: &'static str,
    },
    /// Objects and arrays nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// The body is longer than [`MAX_BODY_LEN`].
    TooLong(usize),
    /// A field the route needs is absent.
    Missing(&'static str),
    /// A field has the wrong type or an impossible value.
    Invalid(&'static str),
    /// The body is empty.
    Empty,
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteError::Syntax { at, what } => {
                write!(f, "malformed route body at byte {at}: {what}")
            }
            RouteError::TooDeep => write!(f, "route body nested deeper than {MAX_DEPTH}"),
            RouteError::TooLong(n) => {
                write!(f, "route body of {n} bytes is longer than {MAX_BODY_LEN}")
            }
            RouteError::Missing(field) => write!(f, "route body lacks {field:?}"),
            RouteError::Invalid(field) => write!(f, "route body has an invalid {field:?}"),
            RouteError::Empty => f.write_str("route body is empty"),
        }
    }
}

impl core::error::Error for RouteError {}

// ---------------------------------------------------------------------------------------------
// A small tolerant JSON reader.

/// A parsed value. Numbers keep their text; objects keep their order.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    Null,
    Bool(bool),
    Number(String),
    Str(String),
    Array(Vec<Value>),
    Object(Vec<(String, Value)>),
}

impl Value {
    fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The field, with `null` read as absent.
    fn field(&self, key: &str) -> Option<&Value> {
        self.get(key).filter(|v| **v != Value::Null)
    }

    fn str_field(&self, key: &'static str) -> Result<&str, RouteError> {
        match self.field(key) {
            Some(Value::Str(s)) => Ok(s),
            Some(_) => Err(RouteError::Invalid(key)),
            None => Err(RouteError::Missing(key)),
        }
    }

    /// An integer field (fastjson and Jackson may also quote numbers); absent reads as 0.
    fn u32_field(&self, key: &'static str) -> Result<u32, RouteError> {
        match self.field(key) {
            None => Ok(0),
            Some(Value::Number(n) | Value::Str(n)) => {
                n.parse::<u32>().map_err(|_| RouteError::Invalid(key))
            }
            Some(_) => Err(RouteError::Invalid(key)),
        }
    }
}

struct Reader<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn parse(input: &'a [u8]) -> Result<Value, RouteError> {
        if input.len() > MAX_BODY_LEN {
            return Err(RouteError::TooLong(input.len()));
        }
        let mut r = Reader { input, pos: 0 };
        r.skip_ws();
        if r.pos == input.len() {
            return Err(RouteError::Empty);
        }
        let v = r.value(0)?;
        r.skip_ws();
        if r.pos != input.len() {
            return Err(r.err("trailing bytes after the value"));
        }
        Ok(v)
    }

    fn err(&self, what: &'static str) -> RouteError {
        RouteError::Syntax { at: self.pos, what }
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8, what: &'static str) -> Result<(), RouteError> {
        self.skip_ws();
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err(what))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, RouteError> {
        self.skip_ws();
        match self.peek() {
            None => Err(self.err("unexpected end of input")),
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string().map(Value::Str),
            Some(b'-' | b'0'..=b'9') => Ok(Value::Number(self.number()?)),
            Some(b't') => self.word("true", Value::Bool(true)),
            Some(b'f') => self.word("false", Value::Bool(false)),
            Some(b'n') => self.word("null", Value::Null),
            Some(_) => Err(self.err("expected a value")),
        }
    }

    fn word(&mut self, word: &'static str, v: Value) -> Result<Value, RouteError> {
        if self.input[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(v)
        } else {
            Err(self.err("expected true, false or null"))
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, RouteError> {
        if depth > MAX_DEPTH {
            return Err(RouteError::TooDeep);
        }
        self.pos += 1; // '{'
        let mut fields = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Value::Object(fields));
        }
        loop {
            self.skip_ws();
            let key = match self.peek() {
                Some(b'"') => self.string()?,
                // fastjson's unquoted keys: numbers (broker ids) and plain identifiers.
                Some(b) if b == b'-' || b == b'_' || b.is_ascii_alphanumeric() => self.bare_key(),
                _ => return Err(self.err("expected an object key")),
            };
            self.expect(b':', "expected ':' after an object key")?;
            let value = self.value(depth)?;
            fields.push((key, value));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Object(fields));
                }
                _ => return Err(self.err("expected ',' or '}' in an object")),
            }
        }
    }

    fn bare_key(&mut self) -> String {
        let start = self.pos;
        while matches!(self.peek(), Some(b) if b == b'-' || b == b'_' || b == b'.' || b.is_ascii_alphanumeric())
        {
            self.pos += 1;
        }
        // ASCII only, so this cannot fail.
        String::from_utf8_lossy(&self.input[start..self.pos]).into_owned()
    }

    fn array(&mut self, depth: usize) -> Result<Value, RouteError> {
        if depth > MAX_DEPTH {
            return Err(RouteError::TooDeep);
        }
        self.pos += 1; // '['
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            items.push(self.value(depth)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.err("expected ',' or ']' in an array")),
            }
        }
    }

    fn number(&mut self) -> Result<String, RouteError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        let digits = self.pos;
        while matches!(
            self.peek(),
            Some(b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
        ) {
            self.pos += 1;
        }
        if self.pos == digits {
            return Err(self.err("expected digits"));
        }
        Ok(String::from_utf8_lossy(&self.input[start..self.pos]).into_owned())
    }

    fn hex4(&mut self) -> Result<u32, RouteError> {
        let digits = self
            .input
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.err("truncated \\u escape"))?;
        let mut v = 0u32;
        for &d in digits {
            let d = char::from(d)
                .to_digit(16)
                .ok_or_else(|| self.err("invalid \\u escape"))?;
            v = v * 16 + d;
        }
        self.pos += 4;
        Ok(v)
    }

    fn string(&mut self) -> Result<String, RouteError> {
        self.pos += 1; // '"'
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(b) = self.peek() else {
                return Err(self.err("unterminated string"));
            };
            self.pos += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let Some(e) = self.peek() else {
                        return Err(self.err("unterminated escape"));
                    };
                    self.pos += 1;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                if !self.input[self.pos..].starts_with(b"\\u") {
                                    return Err(self.err("lone high surrogate"));
                                }
                                self.pos += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.err("invalid low surrogate"));
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            char::from_u32(code).ok_or_else(|| self.err("invalid \\u escape"))?
                        }
                        _ => return Err(self.err("invalid escape")),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                _ => out.push(b),
            }
        }
        String::from_utf8(out).map_err(|_| self.err("string is not UTF-8"))
    }
}

// ---------------------------------------------------------------------------------------------
// Route data.

/// One broker group of a topic: its name, cluster and addresses by broker id, and the topic's
/// queues on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broker {
    /// The broker name (`broker-a`), shared by a master and its slaves.
    pub name: String,
    /// The cluster it belongs to.
    pub cluster: String,
    /// `(broker id, address)`, sorted by id; id 0 is the master.
    pub addrs: Vec<(u64, String)>,
    /// The master's address (broker id 0), if the broker group has a master now.
    pub master: Option<String>,
    /// The topic's queue permissions on this broker ([`PERM_READ`], [`PERM_WRITE`]); 0 when the
    /// route lists no queue data for it.
    pub perm: u32,
    /// The topic's read queues on this broker.
    pub read_queues: u32,
    /// The topic's write queues on this broker.
    pub write_queues: u32,
}

impl Broker {
    /// Whether messages may be sent to it: it has a master and writable queues.
    pub fn writable(&self) -> bool {
        self.master.is_some() && self.perm & PERM_WRITE != 0 && self.write_queues > 0
    }

    /// Whether its queues may be read.
    pub fn readable(&self) -> bool {
        self.perm & PERM_READ != 0 && self.read_queues > 0
    }
}

fn broker_data(v: &Value) -> Result<Broker, RouteError> {
    let name = v.str_field("brokerName")?.to_owned();
    let cluster = match v.field("cluster") {
        Some(Value::Str(s)) => s.clone(),
        None => String::new(),
        Some(_) => return Err(RouteError::Invalid("cluster")),
    };
    let mut addrs = Vec::new();
    match v.field("brokerAddrs") {
        None => {}
        Some(Value::Object(map)) => {
            for (id, addr) in map {
                let id = id
                    .parse::<u64>()
                    .map_err(|_| RouteError::Invalid("brokerAddrs"))?;
                match addr {
                    Value::Str(a) => addrs.push((id, a.clone())),
                    _ => return Err(RouteError::Invalid("brokerAddrs")),
                }
            }
        }
        Some(_) => return Err(RouteError::Invalid("brokerAddrs")),
    }
    addrs.sort();
    addrs.dedup_by(|a, b| a.0 == b.0);
    let master = addrs
        .iter()
        .find(|(id, _)| *id == MASTER_ID)
        .map(|(_, a)| a.clone());
    Ok(Broker {
        name,
        cluster,
        addrs,
        master,
        perm: 0,
        read_queues: 0,
        write_queues: 0,
    })
}

fn array_field<'v>(v: &'v Value, key: &'static str) -> Result<&'v [Value], RouteError> {
    match v.field(key) {
        None => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(RouteError::Invalid(key)),
    }
}

/// A topic's route: the body of a `GET_ROUTEINFO_BY_TOPIC` response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicRoute {
    /// The brokers that hold the topic, sorted by name, each with the topic's queue permissions.
    pub brokers: Vec<Broker>,
    /// `orderTopicConf`, when set.
    pub order_topic_conf: Option<String>,
}

impl TopicRoute {
    /// Parses a route body (standard JSON or fastjson's unquoted numeric keys).
    pub fn parse(body: &[u8]) -> Result<TopicRoute, RouteError> {
        let root = Reader::parse(body)?;
        if !matches!(root, Value::Object(_)) {
            return Err(RouteError::Invalid("route"));
        }
        let mut brokers = Vec::new();
        for b in array_field(&root, "brokerDatas")? {
            let b = broker_data(b)?;
            if !brokers.iter().any(|x: &Broker| x.name == b.name) {
                brokers.push(b);
            }
        }
        for q in array_field(&root, "queueDatas")? {
            let name = q.str_field("brokerName")?;
            let perm = q.u32_field("perm")?;
            let read = q.u32_field("readQueueNums")?;
            let write = q.u32_field("writeQueueNums")?;
            if let Some(b) = brokers.iter_mut().find(|b| b.name == name) {
                b.perm = perm;
                b.read_queues = read;
                b.write_queues = write;
            }
        }
        brokers.sort_by(|a, b| a.name.cmp(&b.name));
        let order_topic_conf = match root.field("orderTopicConf") {
            Some(Value::Str(s)) => Some(s.clone()),
            None => None,
            Some(_) => return Err(RouteError::Invalid("orderTopicConf")),
        };
        Ok(TopicRoute {
            brokers,
            order_topic_conf,
        })
    }

    /// The broker named `name`.
    pub fn broker(&self, name: &str) -> Option<&Broker> {
        self.brokers.iter().find(|b| b.name == name)
    }

    /// The masters' addresses of the brokers that take writes, in broker-name order.
    pub fn writable_masters(&self) -> Vec<String> {
        self.brokers
            .iter()
            .filter(|b| b.writable())
            .filter_map(|b| b.master.clone())
            .collect()
    }

    /// Where to send a message: the broker `name` if given (it must take writes), else the
    /// first broker, by name, that takes writes.
    pub fn choose_writable(&self, name: Option<&str>) -> Result<&Broker, ChooseError> {
        match name {
            Some(name) => {
                let b = self
                    .broker(name)
                    .ok_or_else(|| ChooseError::NoSuchBroker(name.to_owned()))?;
                if b.master.is_none() {
                    Err(ChooseError::NoMaster(name.to_owned()))
                } else if !b.writable() {
                    Err(ChooseError::NotWritable(name.to_owned()))
                } else {
                    Ok(b)
                }
            }
            None => self
                .brokers
                .iter()
                .find(|b| b.writable())
                .ok_or(ChooseError::NoWritableBroker),
        }
    }
}

/// Why no broker could be chosen from a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChooseError {
    /// The route names no broker of that name.
    NoSuchBroker(String),
    /// The broker has no master (broker id 0) now.
    NoMaster(String),
    /// The topic's queues on the broker do not take writes.
    NotWritable(String),
    /// No broker of the route takes writes.
    NoWritableBroker,
}

impl fmt::Display for ChooseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChooseError::NoSuchBroker(n) => write!(f, "the route has no broker {n:?}"),
            ChooseError::NoMaster(n) => write!(f, "broker {n:?} has no master (broker id 0)"),
            ChooseError::NotWritable(n) => {
                write!(f, "broker {n:?} does not take writes for this topic")
            }
            ChooseError::NoWritableBroker => f.write_str("no broker of the route takes writes"),
        }
    }
}

impl core::error::Error for ChooseError {}

/// The body of a `GET_BROKER_CLUSTER_INFO` (106) response: every broker and which cluster
/// holds which brokers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterInfo {
    /// Every broker group, sorted by name (no queue data: `perm` and queue counts are 0).
    pub brokers: Vec<Broker>,
    /// `(cluster name, broker names)`, sorted by cluster name.
    pub clusters: Vec<(String, Vec<String>)>,
}

impl ClusterInfo {
    /// Parses a cluster-info body (standard JSON or fastjson's unquoted numeric keys).
    pub fn parse(body: &[u8]) -> Result<ClusterInfo, RouteError> {
        let root = Reader::parse(body)?;
        if !matches!(root, Value::Object(_)) {
            return Err(RouteError::Invalid("cluster info"));
        }
        let mut brokers = Vec::new();
        match root.field("brokerAddrTable") {
            None => {}
            Some(Value::Object(table)) => {
                for (_, b) in table {
                    brokers.push(broker_data(b)?);
                }
            }
            Some(_) => return Err(RouteError::Invalid("brokerAddrTable")),
        }
        brokers.sort_by(|a, b| a.name.cmp(&b.name));
        let mut clusters = Vec::new();
        match root.field("clusterAddrTable") {
            None => {}
            Some(Value::Object(table)) => {
                for (cluster, names) in table {
                    let Value::Array(names) = names else {
                        return Err(RouteError::Invalid("clusterAddrTable"));
                    };
                    let mut list = Vec::with_capacity(names.len());
                    for n in names {
                        match n {
                            Value::Str(s) => list.push(s.clone()),
                            _ => return Err(RouteError::Invalid("clusterAddrTable")),
                        }
                    }
                    list.sort();
                    clusters.push((cluster.clone(), list));
                }
            }
            Some(_) => return Err(RouteError::Invalid("clusterAddrTable")),
        }
        clusters.sort();
        Ok(ClusterInfo { brokers, clusters })
    }
}

// ---------------------------------------------------------------------------------------------
// What changed between two routes.

/// One difference between two routes of a topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A broker joined the route.
    Added(Broker),
    /// A broker left the route.
    Removed(Broker),
    /// A broker's master changed (failover, or a master appeared or went away).
    MasterChanged {
        /// The broker name.
        name: String,
        /// The master before.
        from: Option<String>,
        /// The master now.
        to: Option<String>,
    },
    /// A broker's queue permissions or queue counts changed, or its slaves did.
    Updated {
        /// The broker before.
        from: Broker,
        /// The broker now.
        to: Broker,
    },
}

/// What changed from `old` to `new`, broker by broker (in name order).
pub fn changes(old: &[Broker], new: &[Broker]) -> Vec<Change> {
    let mut out = Vec::new();
    for o in old {
        match new.iter().find(|n| n.name == o.name) {
            None => out.push(Change::Removed(o.clone())),
            Some(n) if n.master != o.master => out.push(Change::MasterChanged {
                name: n.name.clone(),
                from: o.master.clone(),
                to: n.master.clone(),
            }),
            Some(n) if n != o => out.push(Change::Updated {
                from: o.clone(),
                to: n.clone(),
            }),
            Some(_) => {}
        }
    }
    for n in new {
        if !old.iter().any(|o| o.name == n.name) {
            out.push(Change::Added(n.clone()));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The resolver's decisions.

/// How a [`RouteTracker`] asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TrackerConfig {
    /// How often to ask for the route again after an answer (Java clients: 30 s).
    pub refresh: Duration,
    /// How long to wait, once every name server has failed in a row, before a new round.
    pub retry_after: Duration,
    /// How long one name server has to answer.
    pub ask_timeout: Duration,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            refresh: Duration::from_secs(30),
            retry_after: Duration::from_secs(3),
            ask_timeout: Duration::from_secs(3),
        }
    }
}

/// Identifies one ask, so a late answer to an ask that already timed out is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AskId(u64);

/// A request the driver is to send.
#[derive(Clone, Debug)]
pub struct Ask {
    /// Which ask this is; report its outcome with it.
    pub id: AskId,
    /// The name server's `host:port`.
    pub name_server: String,
    /// The `GET_ROUTEINFO_BY_TOPIC` request.
    pub request: Command,
    /// When the ask times out if nothing is reported.
    pub deadline: Instant,
}

/// What an answer did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The route was read; these are the changes (empty: nothing changed).
    Route(Vec<Change>),
    /// The name server knows no such topic (`TOPIC_NOT_EXIST`): the topic has no brokers now.
    NoTopic(Vec<Change>),
    /// The name server failed (error code, malformed body, transport failure or timeout); the
    /// next ask goes to the next name server.
    Failed(String),
    /// The answer was for an ask that had already ended; ignored.
    Stale,
}

/// Keeps one topic's route up to date from a list of name servers.
///
/// Driving it: call [`poll_ask`](Self::poll_ask) with `now`; send each [`Ask`] it returns and
/// report the response with [`on_response`](Self::on_response) or the failure with
/// [`on_failure`](Self::on_failure); call [`handle_timeout`](Self::handle_timeout) at
/// [`poll_timeout`](Self::poll_timeout). At most one ask is out at a time.
///
/// Decisions: after an answer the same name server is asked again after `refresh`; after a
/// failure the next name server is asked at once, and once every name server has failed in a
/// row, a new round starts after `retry_after`. The route is kept across failures (a name server
/// being down does not remove brokers); an authoritative `TOPIC_NOT_EXIST` empties it.
#[derive(Clone, Debug)]
pub struct RouteTracker {
    name_servers: Vec<String>,
    topic: String,
    config: TrackerConfig,
    current: usize,
    failed_in_row: usize,
    next_ask: Instant,
    out: Option<(AskId, Instant)>,
    next_id: u64,
    route: Option<TopicRoute>,
    answered: u64,
    failures: u64,
}

impl RouteTracker {
    /// A tracker for `topic` asking `name_servers` (`host:port` each) in turn; the first ask is
    /// due at once. An empty list never asks.
    pub fn new(name_servers: Vec<String>, topic: impl Into<String>, config: TrackerConfig) -> Self {
        RouteTracker {
            name_servers,
            topic: topic.into(),
            config,
            current: 0,
            failed_in_row: 0,
            next_ask: Instant::ZERO,
            out: None,
            next_id: 1,
            route: None,
            answered: 0,
            failures: 0,
        }
    }

    /// Parses `HOST:PORT[;HOST:PORT…]` (Java's `namesrvAddr`; commas and spaces also separate).
    pub fn parse_list(list: &str) -> Vec<String> {
        list.split([';', ',', ' '])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(ToOwned::to_owned)
            .collect()
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The route last read (`None` before the first answer).
    pub fn route(&self) -> Option<&TopicRoute> {
        self.route.as_ref()
    }

    /// The name server the next ask goes to.
    pub fn name_server(&self) -> Option<&str> {
        self.name_servers.get(self.current).map(String::as_str)
    }

    /// Answers read and failures seen so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.answered, self.failures)
    }

    /// Whether an ask is out.
    pub fn asking(&self) -> bool {
        self.out.is_some()
    }

    /// The next ask, if one is due at `now` and none is out.
    pub fn poll_ask(&mut self, now: Instant) -> Option<Ask> {
        if self.out.is_some() || now < self.next_ask || self.name_servers.is_empty() {
            return None;
        }
        let id = AskId(self.next_id);
        self.next_id += 1;
        let deadline = now + self.config.ask_timeout;
        self.out = Some((id, deadline));
        Some(Ask {
            id,
            name_server: self.name_servers[self.current].clone(),
            request: Command::request(codes::GET_ROUTEINFO_BY_TOPIC)
                .with_ext("topic", self.topic.as_str()),
            deadline,
        })
    }

    /// When the tracker next needs the driver: the out ask's deadline, or when the next ask is
    /// due (`None` with no name servers).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.out {
            Some((_, deadline)) => Some(deadline),
            None if self.name_servers.is_empty() => None,
            None => Some(self.next_ask),
        }
    }

    /// Fails the out ask if its deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Outcome> {
        match self.out {
            Some((id, deadline)) if now >= deadline => Some(self.on_failure(now, id, "timed out")),
            _ => None,
        }
    }

    /// The ask `id` got no answer (`why`: the transport's reason).
    pub fn on_failure(&mut self, now: Instant, id: AskId, why: &str) -> Outcome {
        if self.out.map(|(out, _)| out) != Some(id) {
            return Outcome::Stale;
        }
        let server = self.name_servers[self.current].clone();
        self.fail(now);
        let mut reason = server;
        reason.push_str(": ");
        reason.push_str(why);
        Outcome::Failed(reason)
    }

    fn fail(&mut self, now: Instant) {
        self.out = None;
        self.failures += 1;
        self.failed_in_row += 1;
        self.current = (self.current + 1) % self.name_servers.len();
        if self.failed_in_row >= self.name_servers.len() {
            self.failed_in_row = 0;
            self.next_ask = now + self.config.retry_after;
        } else {
            self.next_ask = now;
        }
    }

    /// The answer to ask `id`.
    pub fn on_response(&mut self, now: Instant, id: AskId, response: &Command) -> Outcome {
        if self.out.map(|(out, _)| out) != Some(id) {
            return Outcome::Stale;
        }
        let route = match response.code {
            codes::SUCCESS => match TopicRoute::parse(response.body()) {
                Ok(route) => route,
                Err(e) => {
                    let reason = alloc::format!("{}: {e}", self.name_servers[self.current]);
                    self.fail(now);
                    return Outcome::Failed(reason);
                }
            },
            codes::TOPIC_NOT_EXIST => TopicRoute::default(),
            code => {
                let reason = alloc::format!(
                    "{}: answered code {code}{}{}",
                    self.name_servers[self.current],
                    if response.remark().is_some() {
                        ": "
                    } else {
                        ""
                    },
                    response.remark().unwrap_or("")
                );
                self.fail(now);
                return Outcome::Failed(reason);
            }
        };
        self.out = None;
        self.answered += 1;
        self.failed_in_row = 0;
        self.next_ask = now + self.config.refresh;
        let old = self.route.take().unwrap_or_default();
        let diff = changes(&old.brokers, &route.brokers);
        let no_topic = response.code == codes::TOPIC_NOT_EXIST;
        self.route = Some(route);
        if no_topic {
            Outcome::NoTopic(diff)
        } else {
            Outcome::Route(diff)
        }
    }

    /// Asks again as soon as possible (e.g. after a send failed with `NO_PERMISSION`).
    pub fn refresh_now(&mut self, now: Instant) {
        if self.out.is_none() {
            self.next_ask = self.next_ask.min(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    const RUST_ROUTE: &str = r#"{"orderTopicConf":null,"queueDatas":[{"brokerName":"broker-a","readQueueNums":4,"writeQueueNums":4,"perm":6,"topicSysFlag":0}],"brokerDatas":[{"cluster":"DefaultCluster","brokerName":"broker-a","brokerAddrs":{"0":"127.0.0.1:19912"},"zoneName":null,"enableActingMaster":false}],"filterServerTable":{},"topicQueueMappingInfo":null}"#;

    const FASTJSON_ROUTE: &str = r#"{"brokerDatas":[{"brokerAddrs":{0:"172.168.0.104:10911",1:"172.168.0.105:10911"},"brokerName":"broker-b","cluster":"DefaultCluster"},{"brokerAddrs":{1:"172.168.0.107:10911"},"brokerName":"broker-c","cluster":"DefaultCluster"},{"brokerAddrs":{0:"172.168.0.106:10911"},"brokerName":"broker-a","cluster":"DefaultCluster"}],"filterServerTable":{},"queueDatas":[{"brokerName":"broker-a","perm":4,"readQueueNums":8,"topicSynFlag":0,"writeQueueNums":8},{"brokerName":"broker-b","perm":6,"readQueueNums":4,"topicSynFlag":0,"writeQueueNums":4},{"brokerName":"broker-c","perm":6,"readQueueNums":4,"topicSynFlag":0,"writeQueueNums":4}]}"#;

    #[test]
    fn reads_the_rust_name_servers_route() {
        let route = TopicRoute::parse(RUST_ROUTE.as_bytes()).unwrap();
        assert_eq!(route.brokers.len(), 1);
        let b = &route.brokers[0];
        assert_eq!(b.name, "broker-a");
        assert_eq!(b.cluster, "DefaultCluster");
        assert_eq!(b.master.as_deref(), Some("127.0.0.1:19912"));
        assert_eq!((b.perm, b.read_queues, b.write_queues), (6, 4, 4));
        assert!(b.writable() && b.readable());
        assert_eq!(route.order_topic_conf, None);
    }

    #[test]
    fn reads_fastjson_unquoted_keys_and_chooses_a_writable_master() {
        let route = TopicRoute::parse(FASTJSON_ROUTE.as_bytes()).unwrap();
        let names: Vec<_> = route.brokers.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["broker-a", "broker-b", "broker-c"]);
        let b = route.broker("broker-b").unwrap();
        assert_eq!(
            b.addrs,
            vec![
                (0, "172.168.0.104:10911".to_string()),
                (1, "172.168.0.105:10911".to_string())
            ]
        );
        // broker-a is read-only (perm 4), broker-c has no master: broker-b is the choice.
        assert_eq!(route.choose_writable(None).unwrap().name, "broker-b");
        assert_eq!(route.writable_masters(), ["172.168.0.104:10911"]);
        assert_eq!(
            route.choose_writable(Some("broker-a")),
            Err(ChooseError::NotWritable("broker-a".into()))
        );
        assert_eq!(
            route.choose_writable(Some("broker-c")),
            Err(ChooseError::NoMaster("broker-c".into()))
        );
        assert_eq!(
            route.choose_writable(Some("broker-z")),
            Err(ChooseError::NoSuchBroker("broker-z".into()))
        );
    }

    #[test]
    fn reads_cluster_info_in_both_forms() {
        let rust = r#"{"brokerAddrTable":{"broker-a":{"cluster":"DefaultCluster","brokerName":"broker-a","brokerAddrs":{"0":"127.0.0.1:19912"},"zoneName":null,"enableActingMaster":false}},"clusterAddrTable":{"DefaultCluster":["broker-a"]}}"#;
        let java = r#"{"brokerAddrTable":{"broker-a":{"brokerAddrs":{0:"127.0.0.1:19912"},"brokerName":"broker-a","cluster":"DefaultCluster"}},"clusterAddrTable":{"DefaultCluster":["broker-a"]}}"#;
        let a = ClusterInfo::parse(rust.as_bytes()).unwrap();
        let b = ClusterInfo::parse(java.as_bytes()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.brokers[0].master.as_deref(), Some("127.0.0.1:19912"));
        assert_eq!(
            a.clusters,
            vec![("DefaultCluster".to_string(), vec!["broker-a".to_string()])]
        );
    }

    #[test]
    fn strings_unescape_including_surrogate_pairs() {
        let body = r#"{"brokerDatas":[{"brokerName":"b\u00e9\ud83d\ude00\n","brokerAddrs":{}}]}"#;
        let route = TopicRoute::parse(body.as_bytes()).unwrap();
        assert_eq!(route.brokers[0].name, "bé😀\n");
        assert_eq!(route.brokers[0].master, None);
    }

    #[test]
    fn malformed_bodies_are_typed_errors() {
        type Check = fn(&RouteError) -> bool;
        let cases: &[(&[u8], Check)] = &[
            (b"", |e| *e == RouteError::Empty),
            (b"   ", |e| *e == RouteError::Empty),
            (b"{", |e| matches!(e, RouteError::Syntax { .. })),
            (b"{\"brokerDatas\":[", |e| {
                matches!(e, RouteError::Syntax { .. })
            }),
            (b"{\"a\":1}x", |e| matches!(e, RouteError::Syntax { .. })),
            (b"{\"a\" 1}", |e| matches!(e, RouteError::Syntax { .. })),
            (b"{\"a\":\"\\ud800\"}", |e| {
                matches!(e, RouteError::Syntax { .. })
            }),
            (b"{\"a\":\"\\u12\"}", |e| {
                matches!(e, RouteError::Syntax { .. })
            }),
            (b"{\"a\":\"\xff\"}", |e| {
                matches!(e, RouteError::Syntax { .. })
            }),
            (b"{\"a\":tru}", |e| matches!(e, RouteError::Syntax { .. })),
            (b"[1,2]", |e| *e == RouteError::Invalid("route")),
            (b"{\"brokerDatas\":{}}", |e| {
                *e == RouteError::Invalid("brokerDatas")
            }),
            (b"{\"brokerDatas\":[{}]}", |e| {
                *e == RouteError::Missing("brokerName")
            }),
            (
                b"{\"brokerDatas\":[{\"brokerName\":\"a\",\"brokerAddrs\":{x:\"h:1\"}}]}",
                |e| *e == RouteError::Invalid("brokerAddrs"),
            ),
            (
                b"{\"queueDatas\":[{\"brokerName\":\"a\",\"perm\":-1}]}",
                |e| *e == RouteError::Invalid("perm"),
            ),
        ];
        for (body, check) in cases {
            let e = TopicRoute::parse(body).unwrap_err();
            assert!(check(&e), "{:?}: {e:?}", core::str::from_utf8(body));
            assert!(!e.to_string().contains('\n'));
        }
        let deep = "[".repeat(MAX_DEPTH + 1);
        assert_eq!(TopicRoute::parse(deep.as_bytes()), Err(RouteError::TooDeep));
        let mut nested = String::from("{\"x\":");
        nested.push_str(&"[".repeat(MAX_DEPTH + 5));
        assert_eq!(
            TopicRoute::parse(nested.as_bytes()),
            Err(RouteError::TooDeep)
        );
    }

    #[test]
    fn every_prefix_of_a_route_is_an_error_not_a_panic() {
        for n in 0..FASTJSON_ROUTE.len() {
            assert!(TopicRoute::parse(&FASTJSON_ROUTE.as_bytes()[..n]).is_err());
        }
    }

    fn broker(name: &str, master: Option<&str>, perm: u32) -> Broker {
        Broker {
            name: name.into(),
            cluster: "c".into(),
            addrs: master.map(|m| (0, m.to_string())).into_iter().collect(),
            master: master.map(Into::into),
            perm,
            read_queues: 4,
            write_queues: 4,
        }
    }

    #[test]
    fn changes_name_each_difference() {
        let old = vec![
            broker("a", Some("h1:1"), 6),
            broker("b", Some("h2:1"), 6),
            broker("c", Some("h3:1"), 6),
        ];
        let new = vec![
            broker("a", Some("h1:1"), 4),
            broker("b", Some("h9:1"), 6),
            broker("d", Some("h4:1"), 6),
        ];
        assert_eq!(
            changes(&old, &new),
            vec![
                Change::Updated {
                    from: old[0].clone(),
                    to: new[0].clone()
                },
                Change::MasterChanged {
                    name: "b".into(),
                    from: Some("h2:1".into()),
                    to: Some("h9:1".into())
                },
                Change::Removed(old[2].clone()),
                Change::Added(new[2].clone()),
            ]
        );
        assert!(changes(&new, &new).is_empty());
    }

    // Virtual time: the tracker against scripted name servers.

    fn route_body(brokers: &[(&str, &str, u32)]) -> Command {
        let mut datas = String::new();
        let mut queues = String::new();
        for (i, (name, addr, perm)) in brokers.iter().enumerate() {
            if i > 0 {
                datas.push(',');
                queues.push(',');
            }
            datas.push_str(&alloc::format!(
                r#"{{"brokerName":"{name}","cluster":"C","brokerAddrs":{{0:"{addr}"}}}}"#
            ));
            queues.push_str(&alloc::format!(
                r#"{{"brokerName":"{name}","perm":{perm},"readQueueNums":4,"writeQueueNums":4}}"#
            ));
        }
        Command::request(0)
            .response(codes::SUCCESS)
            .with_body(alloc::format!(
                r#"{{"brokerDatas":[{datas}],"queueDatas":[{queues}]}}"#
            ))
    }

    fn ms(n: u64) -> Instant {
        Instant::from_millis(n)
    }

    fn tracker(servers: &[&str]) -> RouteTracker {
        RouteTracker::new(
            servers.iter().map(|s| s.to_string()).collect(),
            "T",
            TrackerConfig {
                refresh: Duration::from_secs(30),
                retry_after: Duration::from_secs(3),
                ask_timeout: Duration::from_secs(1),
            },
        )
    }

    #[test]
    fn asks_once_then_refreshes_on_the_interval() {
        let mut t = tracker(&["n1:9876", "n2:9876"]);
        let ask = t.poll_ask(ms(0)).expect("first ask is due at once");
        assert_eq!(ask.name_server, "n1:9876");
        assert_eq!(ask.request.code, codes::GET_ROUTEINFO_BY_TOPIC);
        assert_eq!(ask.request.ext("topic"), Some("T"));
        assert!(t.poll_ask(ms(0)).is_none(), "one ask at a time");
        let out = t.on_response(ms(10), ask.id, &route_body(&[("a", "h1:1", 6)]));
        let Outcome::Route(ch) = out else {
            panic!("{out:?}")
        };
        assert!(matches!(&ch[..], [Change::Added(b)] if b.name == "a"));
        assert_eq!(t.route().unwrap().writable_masters(), ["h1:1"]);
        assert_eq!(t.poll_timeout(), Some(ms(30_010)));
        assert!(t.poll_ask(ms(30_009)).is_none());
        let ask = t.poll_ask(ms(30_010)).unwrap();
        assert_eq!(ask.name_server, "n1:9876", "a good name server is kept");
        let out = t.on_response(ms(30_011), ask.id, &route_body(&[("a", "h1:1", 6)]));
        assert_eq!(out, Outcome::Route(vec![]), "same route: no change");
    }

    #[test]
    fn a_name_server_down_rotates_then_backs_off_after_a_full_round() {
        let mut t = tracker(&["n1:1", "n2:1", "n3:1"]);
        let a = t.poll_ask(ms(0)).unwrap();
        assert!(
            matches!(t.on_failure(ms(5), a.id, "refused"), Outcome::Failed(r) if r == "n1:1: refused")
        );
        let b = t.poll_ask(ms(5)).expect("next name server at once");
        assert_eq!(b.name_server, "n2:1");
        // n2 does not answer: its deadline passes.
        assert_eq!(t.poll_timeout(), Some(ms(1_005)));
        assert_eq!(t.handle_timeout(ms(1_004)), None);
        assert!(
            matches!(t.handle_timeout(ms(1_005)), Some(Outcome::Failed(r)) if r.contains("timed out"))
        );
        // Its late answer is ignored.
        assert_eq!(
            t.on_response(ms(1_006), b.id, &route_body(&[("a", "h:1", 6)])),
            Outcome::Stale
        );
        let c = t.poll_ask(ms(1_006)).unwrap();
        assert_eq!(c.name_server, "n3:1");
        let busy = Command::request(0)
            .response(codes::SYSTEM_BUSY)
            .with_remark("busy");
        assert!(
            matches!(t.on_response(ms(1_010), c.id, &busy), Outcome::Failed(r) if r.contains("code 2: busy"))
        );
        // All three failed in a row: wait retry_after, then start over at n1.
        assert!(t.poll_ask(ms(1_010)).is_none());
        assert_eq!(t.poll_timeout(), Some(ms(4_010)));
        let d = t.poll_ask(ms(4_010)).unwrap();
        assert_eq!(d.name_server, "n1:1");
        t.on_response(ms(4_011), d.id, &route_body(&[("a", "h:1", 6)]));
        assert_eq!(t.counts(), (1, 3));
        // The route survives later failures.
        let e = t.poll_ask(ms(34_011)).unwrap();
        t.on_failure(ms(34_012), e.id, "reset");
        assert_eq!(t.route().unwrap().brokers.len(), 1);
        assert_eq!(t.name_server(), Some("n2:1"));
    }

    #[test]
    fn a_malformed_body_counts_as_a_failure() {
        let mut t = tracker(&["n1:1", "n2:1"]);
        let a = t.poll_ask(ms(0)).unwrap();
        let bad = Command::request(0)
            .response(codes::SUCCESS)
            .with_body(&b"{\"brokerDatas\":[{"[..]);
        assert!(
            matches!(t.on_response(ms(1), a.id, &bad), Outcome::Failed(r) if r.contains("malformed"))
        );
        assert!(t.route().is_none());
        assert_eq!(t.poll_ask(ms(1)).unwrap().name_server, "n2:1");
    }

    #[test]
    fn route_changes_and_a_removed_broker_are_reported() {
        let mut t = tracker(&["n1:1"]);
        let mut now = 0;
        let answer = |t: &mut RouteTracker, now: &mut u64, resp: Command| {
            let ask = t.poll_ask(ms(*now)).expect("due");
            let out = t.on_response(ms(*now), ask.id, &resp);
            *now += 30_000;
            out
        };
        answer(
            &mut t,
            &mut now,
            route_body(&[("a", "h1:1", 6), ("b", "h2:1", 6)]),
        );
        assert_eq!(t.route().unwrap().writable_masters(), ["h1:1", "h2:1"]);
        // broker-b fails over to a new master, broker-a turns read-only.
        let out = answer(
            &mut t,
            &mut now,
            route_body(&[("a", "h1:1", 4), ("b", "h3:1", 6)]),
        );
        let Outcome::Route(ch) = out else { panic!() };
        assert!(matches!(&ch[0], Change::Updated { from, to } if from.perm == 6 && to.perm == 4));
        assert!(matches!(&ch[1], Change::MasterChanged { to: Some(m), .. } if m == "h3:1"));
        assert_eq!(t.route().unwrap().writable_masters(), ["h3:1"]);
        // broker-a is removed.
        let out = answer(&mut t, &mut now, route_body(&[("b", "h3:1", 6)]));
        assert!(
            matches!(out, Outcome::Route(ref ch) if matches!(&ch[..], [Change::Removed(b)] if b.name == "a"))
        );
        // The topic is deleted: an authoritative empty route.
        let gone = Command::request(0)
            .response(codes::TOPIC_NOT_EXIST)
            .with_remark("no route");
        let out = answer(&mut t, &mut now, gone);
        assert!(
            matches!(out, Outcome::NoTopic(ref ch) if matches!(&ch[..], [Change::Removed(b)] if b.name == "b"))
        );
        assert!(t.route().unwrap().brokers.is_empty());
    }

    #[test]
    fn refresh_now_brings_the_next_ask_forward() {
        let mut t = tracker(&["n1:1"]);
        let a = t.poll_ask(ms(0)).unwrap();
        t.on_response(ms(0), a.id, &route_body(&[("a", "h1:1", 6)]));
        assert!(t.poll_ask(ms(100)).is_none());
        t.refresh_now(ms(100));
        assert!(t.poll_ask(ms(100)).is_some());
    }

    #[test]
    fn no_name_servers_never_asks() {
        let mut t = tracker(&[]);
        assert!(t.poll_ask(ms(0)).is_none());
        assert_eq!(t.poll_timeout(), None);
        assert_eq!(
            RouteTracker::parse_list("a:1; b:2,c:3 ;"),
            ["a:1", "b:2", "c:3"]
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = TopicRoute::parse(&body);
            let _ = ClusterInfo::parse(&body);
        }

        #[test]
        fn mutated_routes_never_panic(
            edits in proptest::collection::vec((0..FASTJSON_ROUTE.len(), proptest::num::u8::ANY), 1..8)
        ) {
            let mut body = FASTJSON_ROUTE.as_bytes().to_vec();
            for (at, byte) in edits {
                body[at] = byte;
            }
            if let Err(e) = TopicRoute::parse(&body) {
                proptest::prop_assert!(!e.to_string().contains('\n'));
            }
        }
    }
}
