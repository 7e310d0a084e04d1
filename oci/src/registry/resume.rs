//! A blob's body that survives a broken connection: when a read fails
//! with a transport error after some bytes, and the registry announced
//! `Accept-Ranges: bytes`, the rest is asked for with `Range: bytes=N-`
//! (a `206` answer required) and reading carries on; the caller's
//! [`Verifier`](crate::digest::Verifier) keeps hashing, so nothing is read
//! twice.

use std::io::{self, Read};

use ureq::Body;
use ureq::http::Response;

use super::{Client, RegistryError, header, transport};
use crate::digest::VerifyError;

pub(super) struct Resumable<'a> {
    client: &'a Client,
    url: String,
    what: String,
    inner: Box<dyn Read + Send + 'a>,
    /// Bytes delivered so far.
    pos: u64,
    ranges: bool,
    resumes: u32,
}

impl<'a> Resumable<'a> {
    pub(super) fn new(client: &'a Client, url: &str, what: &str, resp: Response<Body>) -> Self {
        let ranges = header(&resp, "accept-ranges").is_some_and(|v| v.trim() == "bytes");
        Resumable {
            client,
            url: url.to_owned(),
            what: what.to_owned(),
            inner: Box::new(resp.into_body().into_reader()),
            pos: 0,
            ranges,
            resumes: 0,
        }
    }

    /// Reconnects from `pos`; `Ok(false)` when that cannot be done.
    fn resume(&mut self) -> Result<bool, RegistryError> {
        if !self.ranges || self.pos == 0 || self.resumes + 1 >= self.client.opts.attempts {
            return Ok(false);
        }
        transport::sleep_backoff(&self.client.opts, self.resumes, None);
        self.resumes += 1;
        let resp = self
            .client
            .get_from(&self.url, None, &self.what, Some(self.pos))?;
        let expected = format!("bytes {}-", self.pos);
        let range_ok = header(&resp, "content-range").is_some_and(|r| r.starts_with(&expected));
        if resp.status().as_u16() != 206 || !range_ok {
            return Ok(false);
        }
        tracing::warn!("{}: resumed at byte {}", self.what, self.pos);
        self.inner = Box::new(resp.into_body().into_reader());
        Ok(true)
    }
}

impl Read for Resumable<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.inner.read(buf) {
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Only a broken connection: not a timeout (the
                    // registry stopped sending), not a failed check.
                    if VerifyError::from_io(&e).is_some() || transport::is_timeout(&e) {
                        return Err(e);
                    }
                    match self.resume() {
                        Ok(true) => {}
                        _ => return Err(e),
                    }
                }
            }
        }
    }
}
