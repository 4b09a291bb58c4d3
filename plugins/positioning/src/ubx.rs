//! A byte-stream decoder for u-blox receivers: UBX frames (Fletcher
//! checksum), interleaved NMEA lines and RTCM3 frames (CRC-24Q), fed in
//! arbitrary chunks. Bad frames are counted and skipped, and decoding
//! resynchronises on the next sync pattern. The buffer is bounded.

/// Longest UBX payload accepted (u-blox's largest messages are a few KiB).
const MAX_UBX_PAYLOAD: usize = 8192;
/// Longest NMEA line looked for before a `$` is taken as garbage (the
/// standard says 82 characters, but u-blox PUBX,03 lists every satellite).
const MAX_NMEA_LINE: usize = 1024;
/// Reassembly buffer bound: hostile input cannot grow memory past this.
pub const MAX_BUFFER: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Ubx {
        class: u8,
        id: u8,
        payload: Vec<u8>,
    },
    /// One NMEA line without its terminator.
    Nmea(Vec<u8>),
    Rtcm3 {
        message_type: u16,
    },
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StreamStats {
    pub ubx_frames: u64,
    pub ubx_bad_checksum: u64,
    pub ubx_bad_length: u64,
    pub nmea_lines: u64,
    pub rtcm3_frames: u64,
    pub rtcm3_bad_crc: u64,
    pub skipped_bytes: u64,
    pub overflow_bytes: u64,
    /// Bytes of an incomplete frame left when the stream ended.
    pub truncated_bytes: u64,
}

#[derive(Debug, Default)]
pub struct StreamDecoder {
    buf: Vec<u8>,
    pub stats: StreamStats,
}

fn fletcher(data: &[u8]) -> (u8, u8) {
    data.iter().fold((0u8, 0u8), |(a, b), &x| {
        let a = a.wrapping_add(x);
        (a, b.wrapping_add(a))
    })
}

fn crc24q(data: &[u8]) -> u32 {
    let mut crc: u32 = 0;
    for &b in data {
        crc ^= u32::from(b) << 16;
        for _ in 0..8 {
            crc <<= 1;
            if crc & 0x100_0000 != 0 {
                crc ^= 0x186_4CFB;
            }
        }
    }
    crc & 0xFF_FFFF
}

enum Step {
    Frame(Frame, usize),
    /// Skip bytes (garbage or a bad frame's sync).
    Skip(usize),
    /// Need more input.
    Wait,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a chunk and returns every complete frame in it.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Frame>) {
        self.buf.extend_from_slice(data);
        let mut i = 0;
        while i < self.buf.len() {
            match self.step(i) {
                Step::Frame(f, len) => {
                    match &f {
                        Frame::Ubx { .. } => self.stats.ubx_frames += 1,
                        Frame::Nmea(_) => self.stats.nmea_lines += 1,
                        Frame::Rtcm3 { .. } => self.stats.rtcm3_frames += 1,
                    }
                    out.push(f);
                    i += len;
                }
                Step::Skip(n) => {
                    self.stats.skipped_bytes += n as u64;
                    i += n;
                }
                Step::Wait => break,
            }
        }
        self.buf.drain(..i);
        if self.buf.len() > MAX_BUFFER {
            let drop = self.buf.len() - MAX_BUFFER;
            self.stats.overflow_bytes += drop as u64;
            self.buf.drain(..drop);
        }
    }

    /// End of stream: whatever is left is an incomplete frame.
    pub fn finish(&mut self) {
        self.stats.truncated_bytes += self.buf.len() as u64;
        self.buf.clear();
    }

    fn step(&mut self, i: usize) -> Step {
        let b = &self.buf[i..];
        match b[0] {
            0xB5 => {
                if b.len() < 2 {
                    return Step::Wait;
                }
                if b[1] != 0x62 {
                    return Step::Skip(1);
                }
                if b.len() < 6 {
                    return Step::Wait;
                }
                let len = usize::from(u16::from_le_bytes([b[4], b[5]]));
                if len > MAX_UBX_PAYLOAD {
                    self.stats.ubx_bad_length += 1;
                    return Step::Skip(2);
                }
                if b.len() < 8 + len {
                    return Step::Wait;
                }
                let (ck_a, ck_b) = fletcher(&b[2..6 + len]);
                if (ck_a, ck_b) != (b[6 + len], b[7 + len]) {
                    self.stats.ubx_bad_checksum += 1;
                    return Step::Skip(2);
                }
                Step::Frame(Frame::Ubx { class: b[2], id: b[3], payload: b[6..6 + len].to_vec() }, 8 + len)
            }
            b'$' => {
                for (k, &c) in b.iter().enumerate().skip(1) {
                    if c == b'\n' {
                        let line = b[..k].strip_suffix(b"\r").unwrap_or(&b[..k]);
                        return Step::Frame(Frame::Nmea(line.to_vec()), k + 1);
                    }
                    if !(c.is_ascii_graphic() || c == b' ' || c == b'\r') || k > MAX_NMEA_LINE {
                        return Step::Skip(1);
                    }
                }
                Step::Wait
            }
            0xD3 => {
                if b.len() < 3 {
                    return Step::Wait;
                }
                if b[1] & 0xFC != 0 {
                    return Step::Skip(1);
                }
                let len = (usize::from(b[1] & 0x03) << 8) | usize::from(b[2]);
                if b.len() < 6 + len {
                    return Step::Wait;
                }
                let crc = (u32::from(b[3 + len]) << 16) | (u32::from(b[4 + len]) << 8) | u32::from(b[5 + len]);
                if crc24q(&b[..3 + len]) != crc {
                    self.stats.rtcm3_bad_crc += 1;
                    return Step::Skip(1);
                }
                let message_type = if len >= 2 { (u16::from(b[3]) << 4) | (u16::from(b[4]) >> 4) } else { 0 };
                Step::Frame(Frame::Rtcm3 { message_type }, 6 + len)
            }
            _ => Step::Skip(1),
        }
    }
}

/// The fields of UBX NAV-PVT (0x01 0x07) a fix needs.
#[derive(Debug, Clone, PartialEq)]
pub struct NavPvt {
    pub itow_ms: u32,
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub min: u8,
    pub sec: u8,
    pub valid_date: bool,
    pub valid_time: bool,
    pub nano: i32,
    pub fix_type: u8,
    pub gnss_fix_ok: bool,
    pub num_sv: u8,
    pub lon: f64,
    pub lat: f64,
    pub height_m: f64,
    pub hmsl_m: f64,
    pub h_acc_m: f64,
    pub v_acc_m: f64,
    pub vel_d_mps: f64,
    pub g_speed_mps: f64,
    pub head_mot_deg: f64,
}

fn u32le(p: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]])
}
fn i32le(p: &[u8], at: usize) -> i32 {
    u32le(p, at) as i32
}

impl NavPvt {
    pub fn parse(payload: &[u8]) -> Option<NavPvt> {
        let p = payload;
        if p.len() < 84 {
            return None;
        }
        Some(NavPvt {
            itow_ms: u32le(p, 0),
            year: u16::from_le_bytes([p[4], p[5]]),
            month: p[6],
            day: p[7],
            hour: p[8],
            min: p[9],
            sec: p[10],
            valid_date: p[11] & 0x01 != 0,
            valid_time: p[11] & 0x02 != 0,
            nano: i32le(p, 16),
            fix_type: p[20],
            gnss_fix_ok: p[21] & 0x01 != 0,
            num_sv: p[23],
            lon: f64::from(i32le(p, 24)) * 1e-7,
            lat: f64::from(i32le(p, 28)) * 1e-7,
            height_m: f64::from(i32le(p, 32)) / 1e3,
            hmsl_m: f64::from(i32le(p, 36)) / 1e3,
            h_acc_m: f64::from(u32le(p, 40)) / 1e3,
            v_acc_m: f64::from(u32le(p, 44)) / 1e3,
            vel_d_mps: f64::from(i32le(p, 56)) / 1e3,
            g_speed_mps: f64::from(i32le(p, 60)) / 1e3,
            head_mot_deg: f64::from(i32le(p, 64)) * 1e-5,
        })
    }
}

/// UBX NAV-SOL (0x01 0x06): ECEF solution of u-blox 4..8 receivers.
#[derive(Debug, Clone, PartialEq)]
pub struct NavSol {
    pub itow_ms: u32,
    /// GPS time, when week and time of week are valid: (week, seconds of week).
    pub gps_time: Option<(u16, f64)>,
    pub gps_fix: u8,
    pub dgps: bool,
    /// ECEF position (m) and velocity (m/s).
    pub ecef: [f64; 3],
    pub ecef_vel: [f64; 3],
    pub p_acc_m: f64,
    pub num_sv: u8,
}

impl NavSol {
    pub fn parse(p: &[u8]) -> Option<NavSol> {
        if p.len() < 52 {
            return None;
        }
        let flags = p[11];
        let itow_ms = u32le(p, 0);
        let ftow_ns = i32le(p, 4);
        let week = u16::from_le_bytes([p[8], p[9]]);
        let cm = |at: usize| f64::from(i32le(p, at)) / 100.0;
        Some(NavSol {
            itow_ms,
            gps_time: (flags & 0x0C == 0x0C).then(|| (week, f64::from(itow_ms) / 1e3 + f64::from(ftow_ns) * 1e-9)),
            gps_fix: p[10],
            dgps: flags & 0x02 != 0,
            ecef: [cm(12), cm(16), cm(20)],
            ecef_vel: [cm(28), cm(32), cm(36)],
            p_acc_m: f64::from(u32le(p, 24)) / 100.0,
            num_sv: p[47],
        })
    }
}

/// UBX NAV-TIMEGPS (0x01 0x20): GPS time and the leap second count.
#[derive(Debug, Clone, PartialEq)]
pub struct NavTimeGps {
    pub itow_ms: u32,
    pub gps_time: Option<(u16, f64)>,
    pub leap_s: Option<i8>,
}

impl NavTimeGps {
    pub fn parse(p: &[u8]) -> Option<NavTimeGps> {
        if p.len() < 16 {
            return None;
        }
        let valid = p[11];
        let itow_ms = u32le(p, 0);
        let week = u16::from_le_bytes([p[8], p[9]]);
        let tow = f64::from(itow_ms) / 1e3 + f64::from(i32le(p, 4)) * 1e-9;
        Some(NavTimeGps {
            itow_ms,
            gps_time: (valid & 0x03 == 0x03).then_some((week, tow)),
            leap_s: (valid & 0x04 != 0).then_some(p[10] as i8),
        })
    }
}

/// UBX NAV-POSLLH (0x01 0x02): geodetic position.
#[derive(Debug, Clone, PartialEq)]
pub struct NavPosLlh {
    pub itow_ms: u32,
    pub lon: f64,
    pub lat: f64,
    /// Height above the ellipsoid and above mean sea level, mm.
    pub height_mm: i32,
    pub hmsl_mm: i32,
    pub h_acc_mm: u32,
    pub v_acc_mm: u32,
}

impl NavPosLlh {
    pub fn parse(p: &[u8]) -> Option<NavPosLlh> {
        if p.len() < 28 {
            return None;
        }
        Some(NavPosLlh {
            itow_ms: u32le(p, 0),
            lon: f64::from(i32le(p, 4)) * 1e-7,
            lat: f64::from(i32le(p, 8)) * 1e-7,
            height_mm: i32le(p, 12),
            hmsl_mm: i32le(p, 16),
            h_acc_mm: u32le(p, 20),
            v_acc_mm: u32le(p, 24),
        })
    }
}

/// UBX HNR-PVT (0x28 0x00): high-rate navigation output of ADR/UDR receivers.
#[derive(Debug, Clone, PartialEq)]
pub struct HnrPvt {
    pub itow_ms: u32,
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub min: u8,
    pub sec: u8,
    pub nano: i32,
    pub fix_type: u8,
    pub lon: f64,
    pub lat: f64,
    pub height_mm: i32,
    pub hmsl_mm: i32,
    /// Ground speed and 3D speed, mm/s.
    pub g_speed_mms: i32,
    pub speed_mms: i32,
    pub head_mot_deg: f64,
}

impl HnrPvt {
    pub fn parse(p: &[u8]) -> Option<HnrPvt> {
        if p.len() < 72 {
            return None;
        }
        Some(HnrPvt {
            itow_ms: u32le(p, 0),
            year: u16::from_le_bytes([p[4], p[5]]),
            month: p[6],
            day: p[7],
            hour: p[8],
            min: p[9],
            sec: p[10],
            nano: i32le(p, 12),
            fix_type: p[16],
            lon: f64::from(i32le(p, 20)) * 1e-7,
            lat: f64::from(i32le(p, 24)) * 1e-7,
            height_mm: i32le(p, 28),
            hmsl_mm: i32le(p, 32),
            g_speed_mms: i32le(p, 36),
            speed_mms: i32le(p, 40),
            head_mot_deg: f64::from(i32le(p, 44)) * 1e-5,
        })
    }
}

/// Time of week of NAV messages that carry it at offset 0 (epoch grouping),
/// the same set gpsd uses to find a cycle's last message.
pub fn nav_itow(class: u8, id: u8, payload: &[u8]) -> Option<u32> {
    let with_itow = [0x01, 0x02, 0x04, 0x06, 0x07, 0x11, 0x12, 0x20, 0x21, 0x30, 0x35, 0x61];
    (class == 0x01 && with_itow.contains(&id) && payload.len() >= 4).then(|| u32le(payload, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ubx(class: u8, id: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0xB5, 0x62, class, id];
        f.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        f.extend_from_slice(payload);
        let (a, b) = fletcher(&f[2..]);
        f.extend_from_slice(&[a, b]);
        f
    }

    #[test]
    fn frames_split_anywhere_are_reassembled_and_garbage_skipped() {
        let mut stream = b"junk\xB5\x00".to_vec();
        stream.extend(ubx(1, 7, &[0u8; 92]));
        stream.extend_from_slice(b"$GPGGA,1*00\r\n");
        let mut bad = ubx(1, 2, &[1u8; 28]);
        let last = bad.len() - 1;
        bad[last] ^= 0xFF;
        stream.extend(bad);
        stream.extend(ubx(5, 1, &[6, 1]));
        for chunk in [1usize, 3, 7, 1000] {
            let mut d = StreamDecoder::new();
            let mut out = Vec::new();
            for c in stream.chunks(chunk) {
                d.push(c, &mut out);
            }
            assert_eq!(out.len(), 3, "chunk {chunk}: {out:?}");
            assert_eq!(d.stats.ubx_frames, 2);
            assert_eq!(d.stats.nmea_lines, 1);
            assert_eq!(d.stats.ubx_bad_checksum, 1);
        }
    }

    #[test]
    fn crc24q_check_value() {
        // CRC-24Q (poly 0x864CFB, init 0) check value over "123456789".
        assert_eq!(crc24q(b"123456789"), 0xCD_E703);
    }

    #[test]
    fn oversized_input_stays_bounded() {
        let mut d = StreamDecoder::new();
        let mut out = Vec::new();
        let mut junk = vec![b'$'];
        junk.extend(std::iter::repeat_n(b'A', 200));
        for _ in 0..1000 {
            d.push(&junk, &mut out);
        }
        assert!(d.buf.len() <= MAX_BUFFER);
    }
}
