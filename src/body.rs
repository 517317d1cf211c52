//! Body types shared by the doors: streamed bodies with a size limit, and short static bodies.

use std::error::Error as StdError;

use bytes::Bytes;
use http_body_util::{Either, Full};

/// A streamed body that fails once more than its limit has passed through.
pub type LimitedBody<B> = http_body_util::Limited<B>;

/// A response body: a short generated one or the upstream's, streamed.
pub type ResponseBody = Either<Full<Bytes>, crate::upstream::PooledBody>;

/// Boxed error as used by body combinators.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// A generated body.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Either::Left(Full::new(bytes.into()))
}

/// An upstream's body, streamed.
pub fn streamed(body: crate::upstream::PooledBody) -> ResponseBody {
    Either::Right(body)
}

/// Whether `err` (or anything it wraps) is a body that went over its size limit.
pub fn is_length_limit(err: &(dyn StdError + 'static)) -> bool {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = e.source();
    }
    false
}
