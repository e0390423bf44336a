import Foundation
import MeshControl
import Testing

/// Times in the API's JSON keep their milliseconds; whole seconds showed three 1.4 s tasks as 1, 2 and 1 s.
@Suite struct TimestampTests {
    @Test func timesAreWrittenToTheMillisecondInUTC() {
        #expect(Timestamp.string(Date(timeIntervalSince1970: 1_800_000_000.1259)) == "2027-01-15T08:00:00.125Z")
        #expect(Timestamp.string(Date(timeIntervalSince1970: 0)) == "1970-01-01T00:00:00.000Z")
        #expect(Timestamp.string(Date(timeIntervalSince1970: -0.5)) == "1969-12-31T23:59:59.500Z")
        #expect(Timestamp.string(Date(timeIntervalSince1970: 253_402_300_799.999)) == "9999-12-31T23:59:59.999Z")
    }

    @Test func rfc3339TimesAreReadWithOrWithoutFractionsAndOffsets() {
        let base = 1_800_000_000.0
        #expect(Timestamp.parse("2027-01-15T08:00:00Z")?.timeIntervalSince1970 == base)
        #expect(Timestamp.parse("2027-01-15T08:00:00.25Z")?.timeIntervalSince1970 == base + 0.25)
        #expect(Timestamp.parse("2027-01-15T09:30:00+01:30")?.timeIntervalSince1970 == base)
        #expect(Timestamp.parse("2027-01-15T07:00:00.5-01:00")?.timeIntervalSince1970 == base + 0.5)
        for bad in ["", "2027-01-15", "2027-01-15T08:00:00", "2027-13-15T08:00:00Z", "2027-01-15T08:00:00.Z",
                    "2027-01-15T08:00:00Zjunk", "2027-01-15T24:00:00Z", "2027-01-15T08:00:00+0100", "２０２７-01-15T08:00:00Z"] {
            #expect(Timestamp.parse(bad) == nil, "\(bad)")
        }
        let date = Date(timeIntervalSince1970: 1_765_147_269.437)
        #expect(abs(Timestamp.parse(Timestamp.string(date))!.timeIntervalSince(date)) < 0.001)
    }

    @Test func theAPIsEncoderAndDecoderKeepMilliseconds() throws {
        struct Stamped: Codable, Equatable { let at: Date }
        let stamped = Stamped(at: Date(timeIntervalSince1970: 1_800_000_000.125))
        let text = String(decoding: try ControlAPI.encoder().encode(stamped), as: UTF8.self)
        #expect(text == #"{"at":"2027-01-15T08:00:00.125Z"}"#)
        #expect(try ControlAPI.decoder().decode(Stamped.self, from: Data(text.utf8)) == stamped)
        #expect(throws: DecodingError.self) { try ControlAPI.decoder().decode(Stamped.self, from: Data(#"{"at":"yesterday"}"#.utf8)) }
    }
}
