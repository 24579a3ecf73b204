//! Property tests of the gateway's parsers of outside input: query strings, limits, times and
//! cursors. Whatever the input, no panic: a value or a 400 with a message.

use gateway::api::telemetry::parse_limit;
use gateway::api::{param, typed_param, Params};
use gateway::cursor::Cursor;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn query_strings_never_panic(q in prop_oneof![
        any::<String>(),
        "([a-z_]{1,10}=[%0-9A-Za-z+&=.:-]{0,20}&?){0,6}",
    ]) {
        if let Ok(p) = Params::parse(&q) {
            let _ = parse_limit(typed_param(&p, "limit"));
            let _ = param(&p, "hostname");
            if let Some(c) = param(&p, "cursor") {
                let _ = Cursor::decode(c);
            }
        }
    }

    #[test]
    fn limits_are_a_number_in_range_or_a_refusal(raw in any::<String>()) {
        if let Ok(n) = parse_limit(Some(&raw)) {
            prop_assert!((1..=10_000).contains(&n));
        }
    }

    #[test]
    fn cursors_never_panic(raw in prop_oneof![any::<String>(), "[A-Za-z0-9_-]{0,80}"]) {
        let _ = Cursor::decode(&raw);
    }
}
