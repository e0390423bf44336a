import Foundation
import Testing

@testable import MeshTransport

/// Webhook secrets as Standard Webhooks writes them (`whsec_` and the key in base64), and the ones nodes wrote
/// before (64 hex digits, used as the text they are).
@Suite struct WebhookSigningTests {
    @Test func aStandardWebhooksSecretIsTheKeyItEncodes() {
        let key = (0..<32).map { UInt8($0) }
        #expect(MeshNode.webhookKey(fromSecret: "whsec_" + Data(key).base64EncodedString()) == key)
        // Unpadded base64, as some tools write it, is read too.
        #expect(MeshNode.webhookKey(fromSecret: "whsec_AAEC") == [0, 1, 2])
        #expect(MeshNode.webhookKey(fromSecret: "whsec_not base64!") == nil)
        #expect(MeshNode.webhookKey(fromSecret: "whsec_") == nil)
    }

    @Test func aSecretFromBeforeIsUsedAsItsText() {
        let old = String(repeating: "ab", count: 32)
        #expect(MeshNode.webhookKey(fromSecret: old) == Array(old.utf8))
    }
}
