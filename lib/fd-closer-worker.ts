import { close } from "./libc.ts";

declare const self: Worker;

self.onmessage = (e: MessageEvent<number[]>) => {
  for (const fd of e.data) close(fd);
  postMessage(e.data.length);
};
