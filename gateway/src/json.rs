//! Setting a field of a JSON object this crate built, without `IndexMut`'s panic on a value
//! that is not an object.

use serde_json::Value;

/// Sets `key` on `object`; a value that is not an object is left as it is (every caller
/// passes an object it built with `json!({...})`).
pub(crate) fn set(object: &mut Value, key: &str, value: Value) {
    if let Some(map) = object.as_object_mut() {
        map.insert(key.to_string(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sets_on_objects_and_leaves_other_values_alone() {
        let mut o = json!({"a": 1});
        set(&mut o, "b", json!(2));
        assert_eq!(o, json!({"a": 1, "b": 2}));
        let mut n = json!([1]);
        set(&mut n, "b", json!(2));
        assert_eq!(n, json!([1]));
    }
}
