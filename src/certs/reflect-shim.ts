/**
 * @peculiar/x509 registers its algorithms through tsyringe, which refuses to
 * load unless `Reflect.getMetadata` exists (it expects the reflect-metadata
 * package, which kloak does not ship). tsyringe only stores and reads its own
 * constructor-parameter metadata, so a WeakMap-backed subset is enough.
 *
 * It must run before @peculiar/x509 is evaluated. Under Bun a static import
 * of the package (a CommonJS build) is evaluated before sibling ES modules,
 * whatever the import order, so authority.ts imports this statically and the
 * package dynamically.
 */

type MetaStore = WeakMap<object, Map<unknown, unknown>>;

interface ReflectWithMetadata {
  getMetadata?: (key: unknown, target: object) => unknown;
  getOwnMetadata?: (key: unknown, target: object) => unknown;
  defineMetadata?: (key: unknown, value: unknown, target: object) => void;
  hasOwnMetadata?: (key: unknown, target: object) => boolean;
}

const R = Reflect as unknown as ReflectWithMetadata;

if (typeof R.getMetadata !== "function") {
  const store: MetaStore = new WeakMap();
  const own = (key: unknown, target: object): unknown => store.get(target)?.get(key);
  R.getOwnMetadata = own;
  R.hasOwnMetadata = (key, target) => store.get(target)?.has(key) ?? false;
  R.defineMetadata = (key, value, target) => {
    let m = store.get(target);
    if (!m) store.set(target, (m = new Map()));
    m.set(key, value);
  };
  R.getMetadata = (key, target) => {
    // Walk the prototype chain like reflect-metadata does for inherited classes.
    for (let t: object | null = target; t; t = Object.getPrototypeOf(t) as object | null) {
      const m = store.get(t);
      if (m?.has(key)) return m.get(key);
    }
    return undefined;
  };
}

export {};
