export const greet = (who) => `hi ${who} from an installed package`;
