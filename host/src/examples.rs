//! tmp
pub const RIDE_DRIVER: &[u8] = &[];
