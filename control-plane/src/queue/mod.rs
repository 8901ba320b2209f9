//! The mesh's queue service (issue 16), being built: so far its durable
//! storage, the segment log (`log`). The queue kinds, the `weft.v1.Queue`
//! API, access control and the Redis backend come on top of it.

pub mod log;
