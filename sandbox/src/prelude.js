// Isoflow sandbox prelude. Both engines evaluate it in every fresh context,
// before the step's module: it installs `console`, builds `ctx`, and checks
// the step's output. It evaluates to a function that the host calls once with
// its native functions (`log`, `xml`); the host object itself is never
// reachable from the step's code.
//
// Everything the prelude needs later is captured now, so a step that patches
// JSON, Object, Array, String or Function only changes what its own code
// sees. Methods are captured "uncurried" (bound to Function.prototype.call
// now), and the prelude uses no array methods at all: even an intrinsic
// push writes through setters a step may define on Array.prototype. No
// function of the prelude or the host is reachable from the step: they are
// strict, and call sites never hand out functions (see the end).
(function (host) {
  "use strict";
  const hostLog = host.log;
  const hostXml = host.xml;
  const hostTest = host.test;
  const jsonStringify = JSON.stringify;
  const jsonParse = JSON.parse;
  const objectKeys = Object.keys;
  const getPrototypeOf = Object.getPrototypeOf;
  const getOwnPropertyDescriptor = Object.getOwnPropertyDescriptor;
  const hasOwn = Object.prototype.hasOwnProperty;
  const isArray = Array.isArray;
  const freeze = Object.freeze;
  const defineProperty = Object.defineProperty;
  const StringCtor = String;
  const TypeErrorCtor = TypeError;
  const ErrorCtor = Error;
  const uncurry = Function.prototype.bind.call(Function.prototype.bind, Function.prototype.call);
  const stringSlice = uncurry(String.prototype.slice);
  const symbolToString = uncurry(Symbol.prototype.toString);
  const ownProperty = uncurry(hasOwn);

  // A property that the step cannot change, defined without consulting
  // anything the step could have put on Object.prototype.
  function fixed(object, name, value) {
    defineProperty(object, name, {
      __proto__: null,
      value,
      writable: false,
      enumerable: false,
      configurable: false,
    });
  }

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
        return symbolToString(value);
      case "object":
        if (value === null) return "null";
        if (value instanceof ErrorCtor) {
          // V8's stack starts with "Name: message"; QuickJS's lists frames only.
          const head = StringCtor(value);
          const stack = value.stack;
          if (typeof stack !== "string" || stack === "") return head;
          const starts = stack.length >= head.length && stringSlice(stack, 0, head.length) === head;
          return starts ? stack : head + "\n" + stack;
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
  // A path is a chain of links from the innermost key out: each link holds
  // the key, the container it indexes, and the link of that container.
  function pathOf(link) {
    let out = "";
    for (let l = link; l !== null; l = l.parent) {
      out = (typeof l.key === "number" ? "[" + l.key + "]" : "." + l.key) + out;
    }
    return "output" + out;
  }

  // Finds the first cycle or BigInt once JSON.stringify has failed, to say
  // where it is. Only runs on that failure path: walking every output would
  // cost more than serialising it.
  function findUnserialisable(root) {
    function visit(value, link) {
      const t = typeof value;
      if (t === "bigint") return pathOf(link) + " is a BigInt (convert it to a string or a number)";
      if (t !== "object" || value === null) return null;
      if (typeof value.toJSON === "function") return null;
      for (let l = link; l !== null; l = l.parent) {
        if (l.container === value) {
          return pathOf(link) + " refers back to " + pathOf(l.parent) + " (a cycle)";
        }
      }
      const child = (key) => ({ __proto__: null, key, container: value, parent: link });
      if (isArray(value)) {
        for (let i = 0; i < value.length; i++) {
          const found = visit(value[i], child(i));
          if (found !== null) return found;
        }
      } else {
        const keys = objectKeys(value);
        for (let i = 0; i < keys.length; i++) {
          const found = visit(value[keys[i]], child(keys[i]));
          if (found !== null) return found;
        }
      }
      return null;
    }
    try {
      return visit(root, null);
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

  // Call sites (Error.prepareStackTrace's second argument) never hand out
  // functions: on QuickJS getFunction would return any frame's function,
  // the prelude's and the host's included (an error thrown by ctx.xml has
  // the host's function in its trace), so there it answers undefined for
  // every frame. V8's call site methods cannot be redefined, and need not
  // be: V8 hides strict functions (the prelude's), and the host's functions
  // never call back into the step's code, so they are never on its stack.
  const previous = ownProperty(ErrorCtor, "prepareStackTrace");
  let callSite = null;
  try {
    ErrorCtor.prepareStackTrace = (_, sites) => {
      callSite = sites.length > 0 ? getPrototypeOf(sites[0]) : null;
      return "";
    };
    // V8 prepares the trace when `stack` is read, QuickJS when the error is made.
    void new ErrorCtor().stack;
  } finally {
    if (previous) {
      ErrorCtor.prepareStackTrace = undefined;
    } else {
      delete ErrorCtor.prepareStackTrace;
    }
  }
  if (callSite !== null) {
    const hidden = function () {
      return undefined;
    };
    for (const name of ["getFunction", "getThis"]) {
      const descriptor = getOwnPropertyDescriptor(callSite, name);
      if (descriptor !== undefined && descriptor.configurable) fixed(callSite, name, hidden);
    }
  }

  // Test programs only: a way for a step to reach a test hook of the host.
  if (typeof hostTest === "function") {
    fixed(globalThis, "isoflowTestHook", function isoflowTestHook(name, arg) {
      return hostTest(StringCtor(name), arg === undefined ? "" : StringCtor(arg));
    });
  }

  return { ctx, parseInput, finish };
});
