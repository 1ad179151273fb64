//! The record file: one compact JSON line per accepted event.
//!
//! A dedicated writer thread owns the file. A request hands it all of its lines as one buffer
//! and waits for the acknowledgement, which comes only after the bytes were written and flushed
//! to the OS, so a `kill -9` after a success response can never leave that request's lines
//! partial. Requests that arrive while the thread is writing are grouped into one write.
//! On open, a partial last line (from a process killed mid-write, whose request was therefore
//! never acknowledged) is cut off.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::{mpsc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

struct Job {
    bytes: Vec<u8>,
    done: oneshot::Sender<io::Result<()>>,
}

pub struct Recorder {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Most bytes grouped into one write before the acknowledgements go out.
const GROUP_LIMIT: usize = 8 << 20;

impl Recorder {
    pub fn open(path: &Path) -> io::Result<Recorder> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        cut_partial_last_line(&mut file)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("capi-sandbox-record".into())
            .spawn(move || writer_loop(file, rx))?;
        Ok(Recorder {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Appends `bytes` (whole lines) and waits until they are written and flushed.
    pub async fn append(&self, bytes: Vec<u8>) -> io::Result<()> {
        let (done, wait) = oneshot::channel();
        {
            let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
            let Some(tx) = tx.as_ref() else {
                return Err(io::Error::other("record file is closed"));
            };
            tx.send(Job { bytes, done })
                .map_err(|_| io::Error::other("record writer stopped"))?;
        }
        wait.await
            .unwrap_or_else(|_| Err(io::Error::other("record writer stopped")))
    }

    /// Stops accepting lines; the thread writes what is queued, flushes and exits.
    pub async fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

fn writer_loop(mut file: File, rx: mpsc::Receiver<Job>) {
    let mut acks = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    while let Ok(first) = rx.recv() {
        buf.clear();
        buf.extend_from_slice(&first.bytes);
        acks.push(first.done);
        while buf.len() < GROUP_LIMIT {
            match rx.try_recv() {
                Ok(job) => {
                    buf.extend_from_slice(&job.bytes);
                    acks.push(job.done);
                }
                Err(_) => break,
            }
        }
        let res = file.write_all(&buf).and_then(|_| file.flush());
        for ack in acks.drain(..) {
            let r = match &res {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            let _ = ack.send(r);
        }
    }
    let _ = file.sync_data();
}

/// Truncates the file after its last `\n` (a partial line was never acknowledged).
fn cut_partial_last_line(file: &mut File) -> io::Result<()> {
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok(());
    }
    let mut end = len;
    let mut chunk = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk[..n])?;
        if let Some(p) = chunk[..n].iter().rposition(|&b| b == b'\n') {
            let keep = start + p as u64 + 1;
            if keep != len {
                file.set_len(keep)?;
            }
            return Ok(());
        }
        end = start;
    }
    file.set_len(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn partial_tail_is_cut_and_lines_are_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec.jsonl");
        std::fs::write(&path, b"{\"a\":1}\n{\"b\":").unwrap();
        let r = Recorder::open(&path).unwrap();
        r.append(b"{\"c\":3}\n".to_vec()).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"c\":3}\n"
        );
        r.close().await;
        assert!(r.append(b"x\n".to_vec()).await.is_err());

        std::fs::write(&path, b"no newline at all").unwrap();
        let r = Recorder::open(&path).unwrap();
        r.close().await;
        assert_eq!(std::fs::read(&path).unwrap(), b"");
    }
}
