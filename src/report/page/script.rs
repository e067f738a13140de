//! Data as JavaScript source that is safe anywhere a script can sit: inside an inline
//! `<script>` element of `index.html`, or in a `page/records/*.js` file loaded by a `<script>` tag
//! whatever encoding the browser assumes for it.

use serde::Serialize;

/// `value` as a JavaScript expression (JSON is one): `<`, `>` and `&` are written as `\u003c`,
/// `\u003e`, `\u0026`, so no `</script>` or `<!--` can end or change the script element, and every
/// non-ASCII character (U+2028/U+2029 included) as `\uXXXX` escapes (UTF-16 units), so the text is
/// pure ASCII.
pub fn js_value<T: Serialize + ?Sized>(value: &T) -> Result<String, serde_json::Error> {
    let json = serde_json::to_string(value)?;
    Ok(escape_json(&json))
}

/// Escapes JSON text as [`js_value`] describes. Every character escaped here can only occur
/// inside JSON strings (JSON's own syntax is ASCII without `<`, `>`, `&`), where `\uXXXX`
/// means the same character.
fn escape_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len() + json.len() / 8);
    for c in json.chars() {
        match c {
            '<' | '>' | '&' => push_unit(&mut out, c as u16),
            c if c.is_ascii() => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    push_unit(&mut out, *u);
                }
            }
        }
    }
    out
}

fn push_unit(out: &mut String, unit: u16) {
    use std::fmt::Write as _;
    let _ = write!(out, "\\u{unit:04x}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_end_and_non_ascii_are_escaped_and_round_trip() {
        let text = "a </script><!-- & é 😀 \u{2028} \"q\" \\ \n end";
        let js = js_value(&serde_json::json!({ "t": text })).unwrap();
        assert!(js.is_ascii(), "{js}");
        assert!(!js.to_lowercase().contains("</script") && !js.contains("<!--") && !js.contains('<'), "{js}");
        assert!(js.contains("\\u00e9") && js.contains("\\ud83d\\ude00") && js.contains("\\u2028"), "{js}");
        // Still JSON, with the same content.
        let back: serde_json::Value = serde_json::from_str(&js).unwrap();
        assert_eq!(back["t"], text);
    }

    #[test]
    fn plain_ascii_is_unchanged() {
        let js = js_value(&serde_json::json!([1, "ab", null, 2.5])).unwrap();
        assert_eq!(js, r#"[1,"ab",null,2.5]"#);
    }
}
