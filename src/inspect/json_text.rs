//! JSON's text, for the safety detectors: string values with their escapes decoded (`\n`, `\"`,
//! `\u00e9`, surrogate pairs), every value ([`Keys::All`]) or only the model's output
//! ([`Keys::Output`]), one document's values separated by a newline. A plain state machine over
//! bytes (see [`super::text`]): a few dozen bytes of memory whatever the body, no validation.

/// Which JSON string values are text to inspect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// Every string value (an agent's answer: its shape is the agent's own).
    All,
    /// The values LLM APIs put output text in.
    Output,
    /// A stream's answer, for the judge: in JSON events the values of [`Keys::Output`], and
    /// events that are not JSON as they are (not ids, models or roles, which would crowd out the
    /// text).
    Answer,
}

/// The keys LLM APIs put output text under (a `match` on constants: compared in registers, with
/// no call).
#[inline]
fn is_output_key(key: &[u8]) -> bool {
    matches!(key, b"content" | b"text" | b"refusal" | b"delta")
}

/// Keys longer than this are never output keys: kept only this far.
const KEY_MAX: usize = 16;
/// Containers tracked for their kind; deeper ones count as unkeyed (their text still counts
/// under [`Keys::All`]).
const MAX_DEPTH: u32 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between tokens.
    Outside,
    /// In an object key.
    Key,
    /// In a string value; `emit` when it is text to inspect.
    Str { emit: bool },
    /// After a backslash.
    Escape { key: bool, emit: bool },
    /// In `\uXXXX`: the hex digits so far.
    Unicode { emit: bool, value: u16, digits: u8 },
    /// In a number (text under [`Keys::All`]: an agent may answer a card number as one).
    Number,
}

/// Streams the text of a JSON document (or of several in a row, with [`JsonText::reset`]).
#[derive(Debug)]
pub(crate) struct JsonText {
    pub(super) keys: Keys,
    state: State,
    depth: u32,
    /// Bit `d`: the container at depth `d` (1-based) is an array.
    arrays: u64,
    /// Bit `d`: the array at depth `d` holds output (its key was an output key).
    output_arrays: u64,
    /// In the current object (a tracked one, within [`MAX_DEPTH`]): the next string is a key.
    expect_key: bool,
    key: [u8; KEY_MAX],
    key_len: usize,
    /// The last key read is an output key.
    key_is_output: bool,
    /// A value has been emitted in this document: the next one is separated from it.
    emitted: bool,
    /// A high surrogate waiting for its low half.
    high: Option<u16>,
}

impl JsonText {
    pub(crate) fn new(keys: Keys) -> JsonText {
        JsonText {
            keys,
            state: State::Outside,
            depth: 0,
            arrays: 0,
            output_arrays: 0,
            expect_key: false,
            key: [0; KEY_MAX],
            key_len: 0,
            key_is_output: false,
            emitted: false,
            high: None,
        }
    }

    /// A new document begins (the next SSE event's data): its text follows the last one's with
    /// no separator.
    pub(crate) fn reset(&mut self) {
        *self = JsonText::new(self.keys);
    }

    fn in_array(&self) -> bool {
        self.depth > 0 && self.depth <= MAX_DEPTH && self.arrays & (1 << (self.depth - 1)) != 0
    }

    fn in_object(&self) -> bool {
        self.depth > 0 && self.depth <= MAX_DEPTH && self.arrays & (1 << (self.depth - 1)) == 0
    }

    /// Whether a value starting now is output text.
    fn value_is_output(&self) -> bool {
        match self.keys {
            Keys::All => true,
            Keys::Output | Keys::Answer if self.in_object() => self.key_is_output,
            Keys::Output | Keys::Answer if self.in_array() => {
                self.output_arrays & (1 << (self.depth - 1)) != 0
            }
            Keys::Output | Keys::Answer => false,
        }
    }

    fn push(&mut self, array: bool) {
        let output =
            array && matches!(self.keys, Keys::Output | Keys::Answer) && self.value_is_output();
        self.depth = self.depth.saturating_add(1);
        if self.depth <= MAX_DEPTH {
            let bit = 1u64 << (self.depth - 1);
            self.arrays = if array {
                self.arrays | bit
            } else {
                self.arrays & !bit
            };
            self.output_arrays = if output {
                self.output_arrays | bit
            } else {
                self.output_arrays & !bit
            };
        }
        // Past MAX_DEPTH an object's kind is not tracked: its strings are read as values.
        self.expect_key = !array && self.depth <= MAX_DEPTH;
    }

    fn pop(&mut self) {
        self.depth = self.depth.saturating_sub(1);
        self.expect_key = false;
    }

    /// Feeds bytes of the document; text goes to `sink` in pieces.
    pub(crate) fn feed(&mut self, mut bytes: &[u8], sink: &mut dyn FnMut(&[u8])) {
        while !bytes.is_empty() {
            bytes = match self.state {
                State::Outside => self.outside(bytes, sink),
                State::Number => self.number(bytes, sink),
                State::Key => self.key(bytes),
                State::Str { emit } => self.string(emit, bytes, sink),
                State::Escape { key, emit } => self.escape(key, emit, bytes, sink),
                State::Unicode {
                    emit,
                    value,
                    digits,
                } => self.unicode(emit, value, digits, bytes, sink),
            };
        }
    }

    /// Between tokens: bytes of structure, up to the first of a key, a string or a number (read
    /// here in one loop, not a dispatch per byte). `bytes` is not empty; returns what follows
    /// that first byte.
    #[inline]
    fn outside<'a>(&mut self, bytes: &'a [u8], sink: &mut dyn FnMut(&[u8])) -> &'a [u8] {
        for (i, &b) in bytes.iter().enumerate() {
            match b {
                b'{' => self.push(false),
                b'[' => self.push(true),
                b'}' | b']' => self.pop(),
                b',' => self.expect_key = self.in_object(),
                b':' => self.expect_key = false,
                // Every key is text too when every value is: `{"jane@acme.io": 1}`.
                b'"' if self.expect_key && self.keys == Keys::All => {
                    self.expect_key = false;
                    self.begin_text(sink);
                    self.state = State::Str { emit: true };
                    return &bytes[i + 1..];
                }
                b'"' if self.expect_key => {
                    self.key_len = 0;
                    self.state = State::Key;
                    return &bytes[i + 1..];
                }
                b'-' | b'0'..=b'9' if self.keys == Keys::All => {
                    self.begin_text(sink);
                    sink(std::slice::from_ref(&bytes[i]));
                    self.state = State::Number;
                    return &bytes[i + 1..];
                }
                b'"' => {
                    let emit = self.value_is_output();
                    if emit {
                        self.begin_text(sink);
                    }
                    self.state = State::Str { emit };
                    return &bytes[i + 1..];
                }
                _ => {}
            }
        }
        &[]
    }

    /// A value to emit starts: separated from the document's last one by a newline.
    #[inline]
    fn begin_text(&mut self, sink: &mut dyn FnMut(&[u8])) {
        if self.emitted {
            sink(b"\n");
        }
        self.emitted = true;
    }

    /// In a number: its characters are text. Returns what follows them.
    #[inline]
    fn number<'a>(&mut self, bytes: &'a [u8], sink: &mut dyn FnMut(&[u8])) -> &'a [u8] {
        let end = bytes
            .iter()
            .position(|b| !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
            .unwrap_or(bytes.len());
        if end > 0 {
            sink(&bytes[..end]);
        }
        let rest = &bytes[end..];
        if !rest.is_empty() {
            // The byte after the number is read as structure.
            self.state = State::Outside;
        }
        rest
    }

    /// In an object key: its first [`KEY_MAX`] bytes kept, to tell an output key when it ends.
    /// Returns what follows the closing quote or backslash.
    #[inline]
    fn key<'a>(&mut self, bytes: &'a [u8]) -> &'a [u8] {
        let end = memchr::memchr2(b'"', b'\\', bytes).unwrap_or(bytes.len());
        if self.key_len == 0 && bytes.get(end) == Some(&b'"') {
            // The whole key in this chunk, with no escape: read where it is, not copied.
            self.key_is_output = is_output_key(&bytes[..end]);
            self.expect_key = false;
            self.state = State::Outside;
            return &bytes[end + 1..];
        }
        // `key_len` past KEY_MAX: too long to be an output key.
        let kept = self.key_len.min(KEY_MAX);
        let take = end.min(KEY_MAX - kept);
        self.key[kept..kept + take].copy_from_slice(&bytes[..take]);
        self.key_len = self.key_len.saturating_add(end).min(KEY_MAX + 1);
        match bytes.get(end) {
            Some(b'"') => {
                let key = &self.key[..self.key_len.min(KEY_MAX)];
                self.key_is_output = self.key_len <= KEY_MAX && is_output_key(key);
                self.expect_key = false;
                self.state = State::Outside;
            }
            Some(_) => {
                self.state = State::Escape {
                    key: true,
                    emit: false,
                }
            }
            None => {}
        }
        &bytes[(end + 1).min(bytes.len())..]
    }

    /// In a string value: the run up to a quote or backslash is text when `emit`. Returns what
    /// follows the quote or backslash.
    #[inline]
    fn string<'a>(&mut self, emit: bool, bytes: &'a [u8], sink: &mut dyn FnMut(&[u8])) -> &'a [u8] {
        let end = memchr::memchr2(b'"', b'\\', bytes).unwrap_or(bytes.len());
        if emit && end > 0 {
            self.flush_high(sink);
            sink(&bytes[..end]);
        }
        match bytes.get(end) {
            Some(b'"') => {
                self.flush_high_if(emit, sink);
                self.state = State::Outside;
            }
            Some(_) => self.state = State::Escape { key: false, emit },
            None => {}
        }
        &bytes[(end + 1).min(bytes.len())..]
    }

    /// The byte after a backslash, decoded (`\n`, `\"`, ...) or starting a `\uXXXX`. `bytes` is
    /// not empty; returns what follows the byte.
    #[inline]
    fn escape<'a>(
        &mut self,
        key: bool,
        emit: bool,
        bytes: &'a [u8],
        sink: &mut dyn FnMut(&[u8]),
    ) -> &'a [u8] {
        let b = bytes[0];
        let rest = &bytes[1..];
        if key {
            // Keys with escapes are never output keys.
            self.key_len = KEY_MAX + 1;
            self.state = State::Key;
            return rest;
        }
        if b == b'u' {
            self.state = State::Unicode {
                emit,
                value: 0,
                digits: 0,
            };
            return rest;
        }
        if emit {
            self.flush_high(sink);
            let decoded: &[u8] = match b {
                b'n' => b"\n",
                b't' => b"\t",
                b'r' => b"\r",
                b'b' => b"\x08",
                b'f' => b"\x0c",
                b'"' => b"\"",
                b'\\' => b"\\",
                b'/' => b"/",
                // Not JSON: the byte as it came.
                _ => std::slice::from_ref(&b),
            };
            sink(decoded);
        }
        self.state = State::Str { emit };
        rest
    }

    /// One more hex digit of a `\uXXXX` (`value` and `digits`: those so far). `bytes` is not
    /// empty; returns what follows the digit, or `bytes` whole when it is not one.
    #[inline]
    fn unicode<'a>(
        &mut self,
        emit: bool,
        value: u16,
        digits: u8,
        bytes: &'a [u8],
        sink: &mut dyn FnMut(&[u8]),
    ) -> &'a [u8] {
        let Some(d) = (bytes[0] as char).to_digit(16) else {
            // Not a \u escape after all: go on with the string from this byte.
            self.state = State::Str { emit };
            return bytes;
        };
        let value = (value << 4) | d as u16;
        if digits < 3 {
            self.state = State::Unicode {
                emit,
                value,
                digits: digits + 1,
            };
            return &bytes[1..];
        }
        self.state = State::Str { emit };
        if emit {
            self.code_unit(value, sink);
        }
        &bytes[1..]
    }

    /// A `\uXXXX` code unit: a surrogate pair makes one character; a lone half is U+FFFD.
    fn code_unit(&mut self, unit: u16, sink: &mut dyn FnMut(&[u8])) {
        let c = match (self.high.take(), unit) {
            (Some(high), 0xDC00..=0xDFFF) => {
                let c = 0x10000 + ((u32::from(high) - 0xD800) << 10) + (u32::from(unit) - 0xDC00);
                char::from_u32(c).unwrap_or('\u{FFFD}')
            }
            (high, 0xD800..=0xDBFF) => {
                if high.is_some() {
                    put(sink, '\u{FFFD}');
                }
                self.high = Some(unit);
                return;
            }
            (high, _) => {
                if high.is_some() {
                    put(sink, '\u{FFFD}');
                }
                char::from_u32(u32::from(unit)).unwrap_or('\u{FFFD}')
            }
        };
        put(sink, c);
    }

    fn flush_high(&mut self, sink: &mut dyn FnMut(&[u8])) {
        if self.high.take().is_some() {
            put(sink, '\u{FFFD}');
        }
    }

    fn flush_high_if(&mut self, emit: bool, sink: &mut dyn FnMut(&[u8])) {
        if emit {
            self.flush_high(sink);
        }
    }
}

fn put(sink: &mut dyn FnMut(&[u8]), c: char) {
    let mut buf = [0u8; 4];
    sink(c.encode_utf8(&mut buf).as_bytes());
}
