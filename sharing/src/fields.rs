//! Dotted field paths into JSON objects, and the transformations applied to them.

use std::fmt;

use serde_json::{Map, Value};

/// A dotted path into nested JSON objects, e.g. `truck.driver_id`.
///
/// Each segment names a key of an object; arrays are not traversed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FieldPath(Vec<String>);

impl FieldPath {
    /// Checks a dotted path: no empty segment, no control characters.
    pub fn parse(path: &str) -> Result<FieldPath, String> {
        if path.is_empty() {
            return Err("empty field path".into());
        }
        if path.chars().any(char::is_control) {
            return Err("field path contains a control character".into());
        }
        let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
        if segments.iter().any(String::is_empty) {
            return Err(format!("field path `{path}` has an empty segment (leading, trailing or double dot)"));
        }
        Ok(FieldPath(segments))
    }

    /// The segments of the path.
    pub fn segments(&self) -> &[String] {
        &self.0
    }

    /// The value at this path, if every step is an object holding the key.
    pub fn get<'a>(&self, object: &'a Map<String, Value>) -> Option<&'a Value> {
        let (last, parents) = self.0.split_last()?;
        let mut current = object;
        for segment in parents {
            current = current.get(segment)?.as_object()?;
        }
        current.get(last)
    }

    fn get_mut<'a>(&self, object: &'a mut Map<String, Value>) -> Option<&'a mut Value> {
        let (last, parents) = self.0.split_last()?;
        let mut current = object;
        for segment in parents {
            current = current.get_mut(segment)?.as_object_mut()?;
        }
        current.get_mut(last)
    }

    /// Removes the value at this path, and also a top-level key spelled with the dots
    /// (`{"truck.driver_id": ..}`), so that a producer's flattened naming does not leak it.
    pub(crate) fn remove(&self, object: &mut Map<String, Value>) {
        if self.0.len() > 1 {
            object.remove(&self.to_string());
        }
        let Some((last, parents)) = self.0.split_last() else { return };
        let mut current = &mut *object;
        for segment in parents {
            match current.get_mut(segment).and_then(Value::as_object_mut) {
                Some(next) => current = next,
                None => return,
            }
        }
        current.remove(last);
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// Metres per degree of latitude (and of longitude at the equator) used for the grid.
pub const METRES_PER_DEGREE: f64 = 111_320.0;

/// Rounds a position to a grid of about `metres`.
///
/// Latitude is rounded to a multiple of `metres / 111_320` degrees. Longitude is rounded to a
/// multiple of `metres / (111_320 * cos(lat'))` degrees, where `lat'` is the *rounded*
/// latitude, so every point of one latitude band shares one longitude grid (and the longitude
/// carries no extra latitude detail). Near the poles the longitude step is capped at 360°.
/// Results are kept in [-90, 90] and [-180, 180] and written with 7 decimals (about 1 cm).
pub fn round_position(lat: f64, lon: f64, metres: f64) -> (f64, f64) {
    let lat_step = metres / METRES_PER_DEGREE;
    let lat_r = ((lat / lat_step).round() * lat_step).clamp(-90.0, 90.0);
    let cos = lat_r.to_radians().cos().abs();
    let lon_step = if cos * 360.0 * METRES_PER_DEGREE <= metres { 360.0 } else { metres / (METRES_PER_DEGREE * cos) };
    let mut lon_r = (lon / lon_step).round() * lon_step;
    if lon_r > 180.0 {
        lon_r -= 360.0;
    } else if lon_r < -180.0 {
        lon_r += 360.0;
    }
    (tidy(lat_r), tidy(lon_r.clamp(-180.0, 180.0)))
}

fn tidy(x: f64) -> f64 {
    (x * 1e7).round() / 1e7
}

/// Why a position pair could not be rounded.
pub(crate) enum RoundFailure {
    /// The named field is missing while its partner is present, not a number, or out of range.
    Field(String),
}

/// Rounds the (lat, lon) pair in `object` in place. A pair absent altogether is left alone
/// (the message carries no position); half a pair or a non-number is refused.
pub(crate) fn round_pair(
    object: &mut Map<String, Value>,
    lat_path: &FieldPath,
    lon_path: &FieldPath,
    metres: f64,
) -> Result<(), RoundFailure> {
    let lat = lat_path.get(object).map(Value::as_f64);
    let lon = lon_path.get(object).map(Value::as_f64);
    let (lat, lon) = match (lat, lon) {
        (None, None) => return Ok(()),
        (Some(Some(lat)), Some(Some(lon))) => (lat, lon),
        (Some(Some(_)), _) => return Err(RoundFailure::Field(lon_path.to_string())),
        _ => return Err(RoundFailure::Field(lat_path.to_string())),
    };
    if !(-90.0..=90.0).contains(&lat) {
        return Err(RoundFailure::Field(lat_path.to_string()));
    }
    if !(-180.0..=180.0).contains(&lon) {
        return Err(RoundFailure::Field(lon_path.to_string()));
    }
    let (lat_r, lon_r) = round_position(lat, lon, metres);
    // Both paths were just read, so both are present; a float that cannot be JSON is impossible
    // here (inputs are finite and in range), but fall back to null rather than keep the original.
    if let Some(v) = lat_path.get_mut(object) {
        *v = serde_json::Number::from_f64(lat_r).map_or(Value::Null, Value::Number);
    }
    if let Some(v) = lon_path.get_mut(object) {
        *v = serde_json::Number::from_f64(lon_r).map_or(Value::Null, Value::Number);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn paths_parse_and_reject() {
        assert_eq!(FieldPath::parse("truck.driver_id").unwrap().segments(), ["truck", "driver_id"]);
        for bad in ["", ".a", "a.", "a..b", "a\nb"] {
            assert!(FieldPath::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn remove_nested_and_flattened() {
        let mut o = obj(json!({"truck": {"driver_id": "d7", "id": "t1"}, "truck.driver_id": "d7", "operator": "x"}));
        FieldPath::parse("truck.driver_id").unwrap().remove(&mut o);
        FieldPath::parse("operator").unwrap().remove(&mut o);
        FieldPath::parse("not.there.at_all").unwrap().remove(&mut o);
        assert_eq!(Value::Object(o), json!({"truck": {"id": "t1"}}));
    }

    #[test]
    fn remove_through_a_non_object_is_a_no_op() {
        let mut o = obj(json!({"truck": [1, 2], "a": 1}));
        FieldPath::parse("truck.driver_id").unwrap().remove(&mut o);
        assert_eq!(Value::Object(o), json!({"truck": [1, 2], "a": 1}));
    }

    #[test]
    fn rounding_numbers() {
        // 100 m grid: lat step 0.000898311 deg.
        let (lat, lon) = round_position(47.3769, 8.5417, 100.0);
        let step = 100.0 / METRES_PER_DEGREE;
        assert!(((lat / step) - (lat / step).round()).abs() < 1e-3, "lat {lat} not on grid");
        assert_eq!(lat, 47.3769314);
        let lon_step = 100.0 / (METRES_PER_DEGREE * lat.to_radians().cos());
        assert!(((lon / lon_step) - (lon / lon_step).round()).abs() < 1e-3, "lon {lon} not on grid");
        assert!((lon - 8.5417).abs() <= lon_step / 2.0 + 1e-7);
    }

    #[test]
    fn rounding_at_the_edges_stays_in_range() {
        let (lat, lon) = round_position(89.9999, 179.9999, 1000.0);
        assert!((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon), "{lat} {lon}");
        let (lat, lon) = round_position(-90.0, -180.0, 5000.0);
        assert!((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon), "{lat} {lon}");
    }

    #[test]
    fn half_a_pair_is_refused() {
        let lat = FieldPath::parse("lat").unwrap();
        let lon = FieldPath::parse("lon").unwrap();
        let mut o = obj(json!({"lat": 47.0}));
        assert!(matches!(round_pair(&mut o, &lat, &lon, 100.0), Err(RoundFailure::Field(f)) if f == "lon"));
        let mut o = obj(json!({"lat": "47", "lon": 8.0}));
        assert!(matches!(round_pair(&mut o, &lat, &lon, 100.0), Err(RoundFailure::Field(f)) if f == "lat"));
        let mut o = obj(json!({"lat": 91.0, "lon": 8.0}));
        assert!(round_pair(&mut o, &lat, &lon, 100.0).is_err());
        let mut o = obj(json!({"speed": 3}));
        assert!(round_pair(&mut o, &lat, &lon, 100.0).is_ok());
        assert_eq!(Value::Object(o), json!({"speed": 3}));
    }
}
