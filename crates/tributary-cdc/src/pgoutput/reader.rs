//! A bounds-checked cursor over one payload.
//!
//! The only place that touches raw bytes: every read checks the remaining length first and
//! returns a [`DecodeError`] naming the message and field, so the decoder above it can be
//! written as a straight list of fields and cannot index out of bounds or panic.

use super::error::DecodeError;

pub(crate) struct Reader<'a> {
    /// The whole payload, for offsets in errors.
    len: usize,
    rest: &'a [u8],
    message: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(payload: &'a [u8], message: &'static str) -> Self {
        Reader {
            len: payload.len(),
            rest: payload,
            message,
        }
    }

    pub(crate) fn message(&self) -> &'static str {
        self.message
    }

    fn offset(&self) -> usize {
        self.len - self.rest.len()
    }

    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    pub(crate) fn bytes(
        &mut self,
        needed: usize,
        field: &'static str,
    ) -> Result<&'a [u8], DecodeError> {
        match self.rest.split_at_checked(needed) {
            Some((head, tail)) => {
                self.rest = tail;
                Ok(head)
            }
            None => Err(DecodeError::Truncated {
                message: self.message,
                field,
                offset: self.offset(),
                needed,
                available: self.rest.len(),
            }),
        }
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, field)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A non-negative count or length stored in an `i16`/`i32` field.
    pub(crate) fn length(&mut self, value: i64, field: &'static str) -> Result<usize, DecodeError> {
        usize::try_from(value).map_err(|_| DecodeError::NegativeLength {
            message: self.message,
            field,
            value,
        })
    }

    /// A NUL-terminated UTF-8 string (PostgreSQL's `String` field).
    pub(crate) fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let end =
            self.rest
                .iter()
                .position(|&b| b == 0)
                .ok_or(DecodeError::UnterminatedString {
                    message: self.message,
                    field,
                })?;
        let text = self.bytes(end, field)?;
        self.bytes(1, field)?; // the terminator
        let text = std::str::from_utf8(text).map_err(|_| DecodeError::InvalidUtf8 {
            message: self.message,
            field,
        })?;
        Ok(text.to_owned())
    }

    /// Fails unless the whole payload was read.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                message: self.message,
                count: self.rest.len(),
            })
        }
    }
}
