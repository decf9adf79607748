//! `fake-llm <address> <name>`: a fake OpenAI-compatible provider on `address` (the example's
//! providers). It answers with a JSON completion reporting 10 + 20 tokens until told otherwise
//! with `GET /fake/reply?...` (see `test_harness::llm_backend::LlmReply::from_query`).

use test_harness::llm_backend::{FakeLlm, LlmReply};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(name)) = (args.next(), args.next()) else {
        eprintln!("usage: fake-llm <address, e.g. 127.0.0.1:18091> <name>");
        std::process::exit(2);
    };
    match FakeLlm::start_on(&addr, &name, LlmReply::json(10, 20)) {
        Ok(fake) => {
            println!("fake provider {name:?} on http://{}", fake.addr());
            loop {
                std::thread::park();
            }
        }
        Err(e) => {
            eprintln!("fake-llm: {e}");
            std::process::exit(1);
        }
    }
}
