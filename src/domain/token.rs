//! A runner's token: the secret first label of its host name behind the
//! gateway. Whoever knows it reaches the runner, so it is drawn from the
//! operating system's random source and never derived from the session id
//! (which the client chooses and sends in the clear to the API).

/// Random bytes in a token (128 bits).
const TOKEN_BYTES: usize = 16;

/// A fresh token: 32 lowercase hex digits, a valid DNS label whatever case a
/// browser or proxy gives the host name.
pub fn generate() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Whether `label` has a token's shape; anything else cannot name a runner.
pub fn is_token(label: &str) -> bool {
    label.len() == TOKEN_BYTES * 2
        && label
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn tokens_are_128_bit_hex_labels_and_never_repeat() {
        let tokens: HashSet<String> = (0..1000).map(|_| generate()).collect();
        assert_eq!(tokens.len(), 1000);
        for token in &tokens {
            assert!(is_token(token), "{token}");
        }
        // Every digit shows up: the bytes are not constant or biased to a few.
        let digits: HashSet<char> = tokens.iter().flat_map(|t| t.chars()).collect();
        assert_eq!(digits.len(), 16);
    }

    #[test]
    fn only_the_token_shape_is_a_token() {
        assert!(is_token(&"a".repeat(32)));
        for label in ["", "abc", &"A".repeat(32), &"g".repeat(32), &"a".repeat(33)] {
            assert!(!is_token(label), "{label}");
        }
    }
}
