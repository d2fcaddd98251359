//! Socket adapters for the data path.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream whose vectored writes gather small pieces into one buffer and
/// issue one `send` (a response's head and small body: measured cheaper on
/// loopback than a `writev`; see benches/load), while large ones go out
/// with `writev` as they are. (Telling hyper there were no vectored writes
/// got the first, but hyper then copied every body, 64 KiB responses
/// included, into its own buffer first.)
#[derive(Debug)]
pub struct Flat<T>(pub T);

/// Vectored writes up to this many bytes are gathered into one buffer.
const GATHER: usize = 16 * 1024;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl<T: AsyncRead + Unpin> AsyncRead for Flat<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Flat<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if bufs.len() <= 1 || total > GATHER {
            return Pin::new(&mut self.0).poll_write_vectored(cx, bufs);
        }
        // A partial write of the gathered bytes is a partial write of the
        // slices, in order: the count means the same.
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            for b in bufs {
                scratch.extend_from_slice(b);
            }
            Pin::new(&mut self.0).poll_write(cx, scratch)
        })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }
}
