//! Request and response codes (PROTOCOL.md §5) and the standard answers the core gives.

use alloc::format;

use crate::codec::command::Command;

/// `SUCCESS`.
pub const SUCCESS: i32 = 0;
/// `SYSTEM_ERROR`.
pub const SYSTEM_ERROR: i32 = 1;
/// `SYSTEM_BUSY`: the server is overloaded (remark starts `[REJECTREQUEST]` or `[OVERLOAD]`).
pub const SYSTEM_BUSY: i32 = 2;
/// `REQUEST_CODE_NOT_SUPPORTED`.
pub const REQUEST_CODE_NOT_SUPPORTED: i32 = 3;
/// `TRANSACTION_FAILED`.
pub const TRANSACTION_FAILED: i32 = 4;
/// `FLUSH_DISK_TIMEOUT`.
pub const FLUSH_DISK_TIMEOUT: i32 = 10;
/// `SLAVE_NOT_AVAILABLE`.
pub const SLAVE_NOT_AVAILABLE: i32 = 11;
/// `SERVICE_NOT_AVAILABLE`.
pub const SERVICE_NOT_AVAILABLE: i32 = 14;
/// `NO_PERMISSION`.
pub const NO_PERMISSION: i32 = 16;
/// `TOPIC_NOT_EXIST`.
pub const TOPIC_NOT_EXIST: i32 = 17;
/// `PULL_NOT_FOUND`.
pub const PULL_NOT_FOUND: i32 = 19;
/// `INVALID_PARAMETER`.
pub const INVALID_PARAMETER: i32 = 29;
/// `FLOW_CONTROL`.
pub const FLOW_CONTROL: i32 = 215;
/// `GO_AWAY`.
pub const GO_AWAY: i32 = 1500;

/// Request `SEND_MESSAGE`.
pub const SEND_MESSAGE: i32 = 10;
/// Request `PULL_MESSAGE`.
pub const PULL_MESSAGE: i32 = 11;
/// Request `HEART_BEAT`.
pub const HEART_BEAT: i32 = 34;
/// Request `GET_ROUTEINFO_BY_TOPIC` (ext field `topic`).
pub const GET_ROUTEINFO_BY_TOPIC: i32 = 105;
/// Request `GET_BROKER_CLUSTER_INFO`.
pub const GET_BROKER_CLUSTER_INFO: i32 = 106;
/// Request `SEND_MESSAGE_V2` (ext keys `a`..`n`).
pub const SEND_MESSAGE_V2: i32 = 310;

/// Java's answer to a request code no processor handles: `REQUEST_CODE_NOT_SUPPORTED` with
/// remark `" request type N not supported"`.
pub fn not_supported(request: &Command) -> Command {
    request
        .response(REQUEST_CODE_NOT_SUPPORTED)
        .with_remark(format!(" request type {} not supported", request.code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_supported_matches_java() {
        let req = Command::request(9999).with_opaque(77);
        let resp = not_supported(&req);
        assert_eq!(resp.code, REQUEST_CODE_NOT_SUPPORTED);
        assert_eq!(resp.opaque, 77);
        assert!(resp.is_response());
        assert_eq!(resp.remark().unwrap(), " request type 9999 not supported");
    }
}
