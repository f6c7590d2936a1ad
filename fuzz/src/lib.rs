//! Helpers shared by the fuzz targets: cutting a body into chunks at points the input chooses.

/// A split plan read from the front of a fuzz input: one header byte, whose low 3 bits give how
/// many chunk-size bytes follow (1 to 8) and whose other bits are left to the target, then the
/// size bytes, then the body.
pub struct Split<'a> {
    /// The header byte's bits 3..=7, for the target to use.
    pub flags: u8,
    sizes: &'a [u8],
    pub body: &'a [u8],
}

impl<'a> Split<'a> {
    pub fn parse(input: &'a [u8]) -> Option<Split<'a>> {
        let (&header, rest) = input.split_first()?;
        let n = 1 + (header & 7) as usize;
        if rest.len() < n {
            return None;
        }
        let (sizes, body) = rest.split_at(n);
        Some(Split {
            flags: header >> 3,
            sizes,
            body,
        })
    }

    /// The body cut into chunks whose lengths cycle through the size bytes. A size of 0 yields an
    /// empty chunk followed by a one-byte chunk, so the cutting always makes progress.
    pub fn chunks(&self) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        let mut rest = self.body;
        let mut sizes = self.sizes.iter().cycle();
        while !rest.is_empty() {
            let size = match sizes.next() {
                Some(&0) => {
                    out.push(&rest[..0]);
                    1
                }
                Some(&s) => s as usize,
                None => rest.len(),
            };
            let (chunk, tail) = rest.split_at(size.min(rest.len()));
            out.push(chunk);
            rest = tail;
        }
        out
    }
}
