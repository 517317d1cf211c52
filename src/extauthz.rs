//! Envoy's external-authorization doors: the gRPC `Authorization/Check` service and the HTTP
//! mode (`http_service`). Both hand back the decision core's answer in Envoy's terms; see
//! Envoy's `filters/common/ext_authz` for the one result both of its clients produce.

pub mod grpc;
pub mod http;
