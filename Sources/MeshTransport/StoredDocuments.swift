import Foundation
import Logging
import MeshCore
import MeshStorage

/// What a restart reads back from the task store's documents: every document that cannot be read is logged, skipped
/// and kept in `status` (``ControlAPI/NodeInfo/restoreProblems``), never dropped without a word.
extension MeshNode {
    /// Every stored document of `kind`, decoded as `T`, with its id (which the caller makes the id of its kind).
    func restoredDocuments<T: Decodable>(_ kind: String, as type: T.Type, what: String) -> [(id: TaskStore.DocumentID, value: T)] {
        guard let store = self.taskStore else { return [] }
        let documents: [(id: TaskStore.DocumentID, body: [UInt8])]
        do {
            documents = try store.documents(kind: kind)
        } catch {
            self.restoreProblem("cannot read the stored \(what)s: \(error)")
            return []
        }
        let decoder = JSONDecoder()
        return documents.compactMap { document in
            do {
                return (document.id, try decoder.decode(T.self, from: Data(document.body)))
            } catch {
                self.restoreProblem("a stored \(what) (\(document.id)) cannot be read; it was skipped: \(error)")
                return nil
            }
        }
    }

    func restoreProblem(_ problem: String) {
        self.context.logger.error("\(problem)")
        self.taskPlane.restoreProblems.append(problem)
    }
}
