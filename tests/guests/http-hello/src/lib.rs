//! The smallest useful `wasi:http/proxy` component: answers every request with `hi`, as
//! `cpu-kernel echo` answers `hi` to agora's `POST /v1/invoke`. `wasmtime serve` runs it as the
//! anchor of the HTTP invoke benchmark (`tests/benches/http_invoke.rs`).

use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasip2::http::proxy::export!(Hello);

struct Hello;

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        let response = OutgoingResponse::new(Fields::new());
        // A handler has no error channel once the response is set; failures here end the
        // instance, which the server reports as a 500.
        let Ok(body) = response.body() else { return };
        ResponseOutparam::set(response_out, Ok(response));
        let Ok(mut out) = body.write() else { return };
        let _ = out.write_all(b"hi");
        let _ = out.flush();
        drop(out);
        let _ = OutgoingBody::finish(body, None);
    }
}
