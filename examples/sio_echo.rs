//! The Rust responder of the Socket.IO benchmark (`tests/compat/bench_socketio.sh`): a bus
//! client named `rust` that answers every request, whatever its method, with its own argument
//! (an `on_request_deferred` handler answering at once), so a Socket.IO client's
//! `emitWithAck("rust:echo", x)` through the bridge gets `x` back.
//!
//! ```sh
//! cargo run --release --example sio_echo -- DIR
//! ```

use shmbus::client::{Client, ClientOptions};
use shmbus::proto::Encoding;

fn main() -> Result<(), shmbus::Error> {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: sio_echo DIR");
        std::process::exit(2);
    };
    // Handlers run on this thread (`run`), with no dispatcher thread beside it.
    let c = Client::connect(
        dir,
        ClientOptions::new("rust")
            .accept(Encoding::Json)
            .dispatcher(false),
    )?;
    c.on_request_deferred(|r, ticket| {
        let _ = ticket.answer(&r.payload);
    });
    println!("sio_echo: serving");
    c.run()
}
