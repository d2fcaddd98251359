//! A bounded, allocation-light ClientHello reader: enough of TLS to find the
//! server name (SNI) and ALPN before deciding whether to terminate or to
//! pass the connection through untouched.
//!
//! Reads only what the peer sent; every length is checked against what is
//! left, so truncated or hostile input yields `Invalid`/`NeedMore`, never a
//! panic. The handshake message may span several records.

/// The most ClientHello bytes (records included) we will buffer.
pub const MAX_HELLO: usize = 32 * 1024;

/// What the bytes so far say.
#[derive(Debug, PartialEq, Eq)]
pub enum Peek {
    /// A complete ClientHello.
    Hello(ClientHello),
    /// Looks like TLS; more bytes are needed.
    NeedMore,
    /// Not a TLS handshake at all (plain HTTP on :443, a scanner, noise).
    NotTls,
    /// TLS, but malformed or over our limits.
    Invalid(&'static str),
}

/// The parts of a ClientHello routing needs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// The host name, lowercased, trailing dot removed.
    pub sni: Option<String>,
    pub alpn: Vec<Vec<u8>>,
}

/// Parse the ClientHello at the start of `buf` (the first bytes of a
/// connection).
pub fn peek(buf: &[u8]) -> Peek {
    // Gather the handshake bytes from consecutive handshake records.
    let mut hs: Vec<u8> = Vec::new();
    let mut rest = buf;
    loop {
        if rest.is_empty() {
            return Peek::NeedMore;
        }
        if rest[0] != 0x16 {
            return if hs.is_empty() {
                Peek::NotTls
            } else {
                Peek::Invalid("non-handshake record inside ClientHello")
            };
        }
        if rest.len() < 5 {
            return Peek::NeedMore;
        }
        if rest[1] != 3 {
            return if hs.is_empty() {
                Peek::NotTls
            } else {
                Peek::Invalid("bad record version")
            };
        }
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        if len == 0 || len > 16384 + 2048 {
            return Peek::Invalid("bad record length");
        }
        if rest.len() < 5 + len {
            return if buf.len() >= MAX_HELLO {
                Peek::Invalid("ClientHello too large")
            } else {
                Peek::NeedMore
            };
        }
        hs.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
        if hs.len() >= 4 {
            if hs[0] != 1 {
                return Peek::Invalid("first handshake message is not a ClientHello");
            }
            let msg_len = ((hs[1] as usize) << 16) | ((hs[2] as usize) << 8) | hs[3] as usize;
            if msg_len + 4 > MAX_HELLO {
                return Peek::Invalid("ClientHello too large");
            }
            if hs.len() >= 4 + msg_len {
                return match parse_hello(&hs[4..4 + msg_len]) {
                    Ok(h) => Peek::Hello(h),
                    Err(e) => Peek::Invalid(e),
                };
            }
        }
        if hs.len() > MAX_HELLO {
            return Peek::Invalid("ClientHello too large");
        }
    }
}

/// A cursor that refuses to read past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("truncated ClientHello");
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn u8(&mut self) -> Result<usize, &'static str> {
        Ok(self.take(1)?[0] as usize)
    }

    fn u16(&mut self) -> Result<usize, &'static str> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]) as usize)
    }

    fn vec8(&mut self) -> Result<&'a [u8], &'static str> {
        let n = self.u8()?;
        self.take(n)
    }

    fn vec16(&mut self) -> Result<&'a [u8], &'static str> {
        let n = self.u16()?;
        self.take(n)
    }
}

fn parse_hello(body: &[u8]) -> Result<ClientHello, &'static str> {
    let mut r = Reader(body);
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    r.vec8()?; // legacy_session_id
    r.vec16()?; // cipher_suites
    r.vec8()?; // legacy_compression_methods
    let mut hello = ClientHello::default();
    if r.0.is_empty() {
        return Ok(hello); // no extensions at all (very old clients)
    }
    let mut exts = Reader(r.vec16()?);
    let mut seen_sni = false;
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec16()?;
        match kind {
            0 => {
                if seen_sni {
                    return Err("duplicate server_name extension");
                }
                seen_sni = true;
                hello.sni = server_name(data)?;
            }
            16 => {
                let mut list = Reader(Reader(data).vec16()?);
                while !list.0.is_empty() {
                    let p = list.vec8()?;
                    if p.is_empty() {
                        return Err("empty ALPN protocol");
                    }
                    if hello.alpn.len() < 16 {
                        hello.alpn.push(p.to_vec());
                    }
                }
            }
            _ => {}
        }
    }
    Ok(hello)
}

fn server_name(data: &[u8]) -> Result<Option<String>, &'static str> {
    let mut list = Reader(Reader(data).vec16()?);
    while !list.0.is_empty() {
        let kind = list.u8()?;
        let name = list.vec16()?;
        if kind != 0 {
            continue;
        }
        if name.is_empty() || name.len() > 253 {
            return Err("bad server name length");
        }
        if !name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err("server name has invalid characters");
        }
        let mut s = String::from_utf8_lossy(name).to_ascii_lowercase();
        if s.ends_with('.') {
            s.pop();
        }
        return Ok(Some(s));
    }
    Ok(None)
}

#[cfg(test)]
mod tests;
