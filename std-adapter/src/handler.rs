//! What answers the peer's requests, and the worker pool that runs it.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub use remora_core::{Handler, NotSupported};

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of worker threads fed through a channel.
pub(crate) struct Workers {
    sender: Mutex<Option<mpsc::Sender<Job>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Workers {
    pub(crate) fn new(threads: usize, name: &str) -> Arc<Workers> {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let workers = (0..threads.max(1))
            .map(|i| {
                let receiver = Arc::clone(&receiver);
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || loop {
                        let job = receiver.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    })
                    .expect("spawn worker thread")
            })
            .collect();
        Arc::new(Workers {
            sender: Mutex::new(Some(sender)),
            workers: Mutex::new(workers),
        })
    }

    /// Runs `job` on a worker; false if the pool is shut down.
    pub(crate) fn execute(&self, job: impl FnOnce() + Send + 'static) -> bool {
        let sender = self.sender.lock().unwrap_or_else(|e| e.into_inner());
        match sender.as_ref() {
            Some(s) => s.send(Box::new(job)).is_ok(),
            None => false,
        }
    }

    /// Lets queued jobs finish, then joins the workers. Idempotent; must not run on a worker.
    pub(crate) fn shutdown(&self) {
        self.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        let me = std::thread::current().id();
        for w in workers {
            if w.thread().id() != me {
                let _ = w.join();
            }
        }
    }
}
