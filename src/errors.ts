/**
 * Errors that end a command. Each carries the exit code the CLI uses and a
 * message that says what was wrong and what to do; none may ever contain a
 * secret value (name the secret instead).
 */
export class KloakError extends Error {
  constructor(
    message: string,
    /** 2: the invocation is wrong (usage, input files); 1: the machine cannot run kloak;
     * 126/127: the command cannot be executed / was not found (a shell's codes). */
    readonly exitCode: 1 | 2 | 126 | 127,
  ) {
    super(message);
    this.name = new.target.name;
  }
}

/** Bad flags, arguments or input files. Exit code 2. */
export class UsageError extends KloakError {
  constructor(message: string) {
    super(message, 2);
  }
}

/** CMD of `kloak exec` cannot run: 127 not found, 126 not executable. */
export class CommandError extends KloakError {
  constructor(message: string, exitCode: 126 | 127) {
    super(message, exitCode);
  }
}

/** The environment (kernel, permissions, libraries) cannot do what was asked. Exit code 1. */
export class EnvironmentError extends KloakError {
  constructor(message: string) {
    super(message, 1);
  }
}
