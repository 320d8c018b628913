// Isoflow sandbox prelude. Both engines evaluate it in every fresh context,
// before the step's module: it installs `console`, builds `ctx`, and checks
// the step's output. It evaluates to a function that the host calls once with
// its native functions (`log`, `xml`); the host object itself is never
// reachable from the step's code.
//
// Everything the prelude needs later is captured now, so a step that patches
// JSON, Object or Array only changes what its own code sees.
(function (host) {
  "use strict";
  const hostLog = host.log;
  const hostXml = host.xml;
  const jsonStringify = JSON.stringify;
  const jsonParse = JSON.parse;
  const objectKeys = Object.keys;
  const isArray = Array.isArray;
  const freeze = Object.freeze;
  const defineProperty = Object.defineProperty;
  const StringCtor = String;
  const TypeErrorCtor = TypeError;
  const ErrorCtor = Error;

  // Log levels as the host numbers them: 0 debug, 1 info, 2 warn, 3 error.
  function describe(value) {
    switch (typeof value) {
      case "string":
        return value;
      case "undefined":
        return "undefined";
      case "function":
        return "[Function " + (value.name || "(anonymous)") + "]";
      case "bigint":
        return StringCtor(value) + "n";
      case "symbol":
        return value.toString();
      case "object":
        if (value === null) return "null";
        if (value instanceof ErrorCtor) {
          // V8's stack starts with "Name: message"; QuickJS's lists frames only.
          const head = StringCtor(value);
          const stack = value.stack;
          if (typeof stack !== "string" || stack === "") return head;
          return stack.startsWith(head) ? stack : head + "\n" + stack;
        }
        try {
          const text = jsonStringify(value);
          return text === undefined ? StringCtor(value) : text;
        } catch (_) {
          return StringCtor(value);
        }
      default:
        return StringCtor(value);
    }
  }

  function format(args) {
    let out = "";
    for (let i = 0; i < args.length; i++) {
      if (i > 0) out += " ";
      out += describe(args[i]);
    }
    return out;
  }

  function logger(level) {
    return function log(...args) {
      hostLog(level, format(args));
    };
  }

  const console = {
    debug: logger(0),
    trace: logger(0),
    log: logger(1),
    info: logger(1),
    warn: logger(2),
    error: logger(3),
  };
  defineProperty(globalThis, "console", {
    value: console,
    writable: true,
    configurable: true,
    enumerable: false,
  });

  function options(value, what) {
    if (value === undefined || value === null) return "{}";
    if (typeof value !== "object" || isArray(value)) {
      throw new TypeErrorCtor(what + ": options must be an object");
    }
    return jsonStringify(value);
  }

  const xml = freeze({
    parse(text, opts) {
      if (typeof text !== "string") {
        throw new TypeErrorCtor("ctx.xml.parse: expected a string of XML, got " + typeof text);
      }
      return jsonParse(hostXml(0, text, options(opts, "ctx.xml.parse")));
    },
    stringify(value, opts) {
      const json = value === undefined ? undefined : jsonStringify(value);
      if (json === undefined) {
        throw new TypeErrorCtor(
          "ctx.xml.stringify: expected an object with one root element, such as { order: { id: 1 } }",
        );
      }
      return hostXml(1, json, options(opts, "ctx.xml.stringify"));
    },
  });

  const log = logger(1);
  log.debug = logger(0);
  log.info = logger(1);
  log.warn = logger(2);
  log.error = logger(3);
  const ctx = freeze({ log: freeze(log), xml });

  // Output checks. The output is what JSON.stringify makes of the value, with
  // its usual rules (a property holding undefined or a function is left out);
  // only values JSON cannot carry at all fail the step, with a path.
  function pathOf(path) {
    let out = "output";
    for (let i = 0; i < path.length; i++) {
      const key = path[i];
      out += typeof key === "number" ? "[" + key + "]" : "." + key;
    }
    return out;
  }

  // Finds the first cycle or BigInt once JSON.stringify has failed, to say
  // where it is. Only runs on that failure path: walking every output would
  // cost more than serialising it.
  function findUnserialisable(root) {
    const path = [];
    const ancestors = [];
    function visit(value) {
      const t = typeof value;
      if (t === "bigint") return pathOf(path) + " is a BigInt (convert it to a string or a number)";
      if (t !== "object" || value === null) return null;
      if (typeof value.toJSON === "function") return null;
      const at = ancestors.indexOf(value);
      if (at !== -1) {
        return pathOf(path) + " refers back to " + pathOf(path.slice(0, at)) + " (a cycle)";
      }
      ancestors.push(value);
      let found = null;
      if (isArray(value)) {
        for (let i = 0; i < value.length && found === null; i++) {
          path.push(i);
          found = visit(value[i]);
          path.pop();
        }
      } else {
        const keys = objectKeys(value);
        for (let i = 0; i < keys.length && found === null; i++) {
          path.push(keys[i]);
          found = visit(value[keys[i]]);
          path.pop();
        }
      }
      ancestors.pop();
      return found;
    }
    try {
      return visit(root);
    } catch (_) {
      // Too deep to walk, or a getter threw: JSON.stringify has the last word.
      return null;
    }
  }

  function finish(value) {
    switch (typeof value) {
      case "undefined":
        throw new TypeErrorCtor(
          "the step returned undefined; return null, a boolean, a number, a string, an array or an object",
        );
      case "function":
        throw new TypeErrorCtor("the step returned a function; call it, or return data");
      case "symbol":
        throw new TypeErrorCtor("the step returned a symbol");
      case "bigint":
        throw new TypeErrorCtor("the step returned a BigInt (convert it to a string or a number)");
    }
    let text;
    try {
      text = jsonStringify(value);
    } catch (e) {
      throw new TypeErrorCtor(findUnserialisable(value) || describe(e));
    }
    if (text === undefined) {
      throw new TypeErrorCtor("output serialises to nothing (its toJSON returned undefined)");
    }
    return text;
  }

  function parseInput(text) {
    return jsonParse(text);
  }

  return { ctx, parseInput, finish };
});
