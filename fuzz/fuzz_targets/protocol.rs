//! The plugin↔holder protocol's decoders (`slurm_conf::protocol`): the
//! holder decodes the plugin's request, the plugin the holder's lines
//! (progress, then the report). Must never panic; what decodes encodes back to the same message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use slurm_conf::protocol::{Message, Report, Request, VERSION};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Request::decode(data) {
        assert_eq!(r.version, VERSION);
        assert_eq!(Request::decode(&r.encode()).unwrap(), r);
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(r) = Report::decode_line(text)
    {
        let line = r.encode_line();
        assert_eq!(line.matches('\n').count(), 1);
        assert_eq!(Report::decode_line(&line).unwrap(), r);
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(m) = Message::decode_line(text)
    {
        let line = match &m {
            Message::Progress(p) => p.encode_line(),
            Message::Report(r) => r.encode_line(),
        };
        assert_eq!(line.matches('\n').count(), 1);
        let back = Message::decode_line(&line).unwrap();
        match (&m, &back) {
            // Newlines in the message become spaces; the rest is kept.
            (Message::Progress(a), Message::Progress(b)) => {
                assert_eq!((&a.phase, a.done, a.total), (&b.phase, b.done, b.total));
                assert_eq!(a.message.replace(['\n', '\r'], " "), b.message);
            }
            _ => assert_eq!(back, m),
        }
    }
});
