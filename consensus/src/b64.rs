//! Bytes as base64 text in JSON, for snapshots on disk and on the wire: a
//! third larger than the bytes, where serde's default (an array of numbers)
//! is about 3.5 times larger. Reading also takes the array form that
//! earlier versions wrote, so their snapshots still load.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::de::Error;
use serde::{Deserialize, Deserializer, Serializer};

/// `#[serde(serialize_with)]`: the bytes as base64 text.
pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&STANDARD.encode(bytes))
}

/// `#[serde(deserialize_with)]`: base64 text, or an array of numbers.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Text(String),
        Numbers(Vec<u8>),
    }
    match Form::deserialize(d)? {
        Form::Text(text) => STANDARD.decode(text).map_err(D::Error::custom),
        Form::Numbers(bytes) => Ok(bytes),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Blob {
        #[serde(with = "super")]
        data: Vec<u8>,
    }

    #[test]
    fn bytes_travel_as_base64_and_the_old_array_form_still_reads() {
        let blob = Blob {
            data: (0..=255).collect(),
        };
        let text = serde_json::to_string(&blob).unwrap();
        assert!(text.len() < 400, "{} bytes", text.len());
        assert_eq!(serde_json::from_str::<Blob>(&text).unwrap(), blob);
        let old = r#"{"data":[1,2,255]}"#;
        assert_eq!(
            serde_json::from_str::<Blob>(old).unwrap().data,
            vec![1, 2, 255]
        );
        assert!(serde_json::from_str::<Blob>(r#"{"data":"%%%"}"#).is_err());
    }
}
