/**
 * What kloak keeps of a Secret: the agent's watch cache holds these (made by
 * controller/secret-view.ts), the controller and the webhook decide on them.
 * The metadata is trimmed (trimMeta) and keeps kloak's annotations only.
 */
import type { Meta } from "./contract.ts";
import type { ObjectMeta } from "./reflector.ts";

export interface SecretView {
  metadata: ObjectMeta & Meta;
  type?: string;
  /**
   * Enabled originals and shadows: base64 values (a long value copied as it
   * is: its digest). Any other Secret: its key names, with empty values.
   */
  data?: Record<string, string>;
}
